//! Database access shared by every service: one sea-orm connection to SQLite (default,
//! a file under ./var) or PostgreSQL (production), migrations, and error classification.
//!
//! SQLite notes: WAL journal and a long busy timeout let several processes share one file
//! (two parking-lot replicas in tests). Transactions here start with a write, so SQLite
//! takes its write lock first and never has to upgrade a read lock mid-transaction.
//!
//! Durability on SQLite is chosen in the URL: `synchronous=full` (the default) syncs the
//! WAL at every commit, so a committed application survives a power loss; `normal` syncs
//! only at checkpoints: a commit survives the process being killed, but the last
//! transactions before a power loss or kernel crash may be gone (never a corrupt file).
//! Batched consumers commit once per batch, so the sync's cost is shared.

use sea_orm::sea_query::{InsertStatement, SimpleExpr};
use sea_orm::sqlx::sqlite::SqliteSynchronous;
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    DbErr, IsolationLevel, QueryResult, SqlErr, TransactionTrait,
};
use sea_orm_migration::prelude::*;
use std::time::Duration;

/// Opening a database failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the folder for the SQLite file {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] DbErr),
    #[error("migrations failed: {0}")]
    Migrate(#[source] DbErr),
}

/// Connects, creating the SQLite file and its folder when needed.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbError> {
    let sqlite = url.starts_with("sqlite:");
    let (url, synchronous) = if sqlite {
        sqlite_synchronous(url).map_err(|e| DbError::Connect(DbErr::Custom(e)))?
    } else {
        (url.to_owned(), SqliteSynchronous::Full)
    };
    let url = url.as_str();
    if sqlite {
        if let Some(folder) = sqlite_folder(url) {
            std::fs::create_dir_all(&folder).map_err(|source| DbError::Folder {
                path: folder.clone(),
                source,
            })?;
        }
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30));
    if sqlite {
        options.max_connections(4).map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(Duration::from_secs(30))
                .create_if_missing(true)
        });
    } else {
        options.max_connections(10);
    }
    Database::connect(options).await.map_err(DbError::Connect)
}

/// Connects and brings the schema up to date.
pub async fn connect_and_migrate<M: MigratorTrait>(
    url: &str,
) -> Result<DatabaseConnection, DbError> {
    let db = connect(url).await?;
    // Replicas starting together may race on the schema; the loser sees the winner's
    // tables on its next try (every migration is idempotent).
    let mut attempt = 0;
    loop {
        match M::up(&db, None).await {
            Ok(()) => return Ok(db),
            Err(err) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(%err, attempt, "migration failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(err) => return Err(DbError::Migrate(err)),
        }
    }
}

/// Takes our `synchronous=full|normal` parameter out of a SQLite URL (sqlx does not read it).
fn sqlite_synchronous(url: &str) -> Result<(String, SqliteSynchronous), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), SqliteSynchronous::Full));
    };
    let mut synchronous = SqliteSynchronous::Full;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("synchronous", value)) => {
                synchronous = match value.to_ascii_lowercase().as_str() {
                    "full" => SqliteSynchronous::Full,
                    "normal" => SqliteSynchronous::Normal,
                    other => {
                        return Err(format!(
                            "synchronous={other} in the SQLite URL: use full or normal"
                        ))
                    }
                }
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, synchronous))
}

fn sqlite_folder(url: &str) -> Option<String> {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    let parent = std::path::Path::new(path).parent()?;
    let parent = parent.to_str()?;
    (!parent.is_empty()).then(|| parent.to_owned())
}

/// Rows per multi-row statement: PostgreSQL takes at most 65,535 parameters, and no table
/// here has more than 8 columns.
pub const ROWS_PER_STATEMENT: usize = 1000;

/// Adds one row of values to a multi-row INSERT (sea-query refuses a row whose width is
/// not the column list's).
pub fn add_row<I>(insert: &mut InsertStatement, values: I) -> Result<(), DbErr>
where
    I: IntoIterator<Item = SimpleExpr>,
{
    insert
        .values(values)
        .map(|_| ())
        .map_err(|e| DbErr::Custom(e.to_string()))
}

/// Runs an `INSERT .. RETURNING` and reads each row it returns with `read`.
pub async fn insert_returning<C, T, F>(
    db: &C,
    insert: &InsertStatement,
    read: F,
) -> Result<Vec<T>, DbErr>
where
    C: ConnectionTrait,
    F: Fn(&QueryResult) -> Result<T, DbErr>,
{
    let statement = db.get_database_backend().build(insert);
    db.query_all(statement).await?.iter().map(read).collect()
}

/// A read-only transaction whose reads all see the database at one moment, for an answer
/// read in several statements (a view and its history). PostgreSQL: REPEATABLE READ (READ
/// COMMITTED would let a commit land between two reads); SQLite: a read transaction keeps
/// one WAL snapshot from its first read on.
pub async fn snapshot(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            db.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await
        }
        _ => db.begin().await,
    }
}

/// True when the statement broke a unique constraint (a duplicate).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Runs a statement that only PostgreSQL and SQLite both understand verbatim
/// (partial indexes), as migrations need now and then.
pub async fn execute_sql(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    manager
        .get_connection()
        .execute_unprepared(sql)
        .await
        .map(|_| ())
}

/// A service's migrations after the shared ones (outbox and inbox).
pub fn with_shared(own: Vec<Box<dyn MigrationTrait>>) -> Vec<Box<dyn MigrationTrait>> {
    let mut all = shared_migrations();
    all.extend(own);
    all
}

/// A `BIGINT` auto-increment primary key (the same column on SQLite and PostgreSQL).
pub fn id_column<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

/// A `TIMESTAMP WITH TIME ZONE NOT NULL` column.
pub fn time_column<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

/// The migrations of the tables every service has: the outbox and the inbox.
pub fn shared_migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateOutboxAndInbox)]
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    EventId,
    Subject,
    Payload,
    Traceparent,
    CreatedAt,
    SentAt,
}

#[derive(DeriveIden)]
enum ProcessedEvents {
    Table,
    Consumer,
    EventId,
    ProcessedAt,
}

struct CreateOutboxAndInbox;

impl MigrationName for CreateOutboxAndInbox {
    fn name(&self) -> &str {
        "m0001_common_outbox_and_inbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateOutboxAndInbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(id_column(Outbox::Id))
                    .col(
                        ColumnDef::new(Outbox::EventId)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Outbox::Subject).string().not_null())
                    .col(ColumnDef::new(Outbox::Payload).blob().not_null())
                    .col(ColumnDef::new(Outbox::Traceparent).string().null())
                    .col(time_column(Outbox::CreatedAt))
                    .col(
                        ColumnDef::new(Outbox::SentAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        // The relay only ever reads unsent rows in id order.
        execute_sql(
            manager,
            "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL",
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProcessedEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ProcessedEvents::Consumer)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ProcessedEvents::EventId).string().not_null())
                    .col(time_column(ProcessedEvents::ProcessedAt))
                    .primary_key(
                        Index::create()
                            .col(ProcessedEvents::Consumer)
                            .col(ProcessedEvents::EventId),
                    )
                    .to_owned(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_durability_off_the_url() {
        let read = |url: &str| sqlite_synchronous(url).map(|(u, s)| (u, format!("{s:?}")));
        assert_eq!(
            read("sqlite://var/a.db?mode=rwc"),
            Ok(("sqlite://var/a.db?mode=rwc".into(), "Full".into()))
        );
        assert_eq!(
            read("sqlite://var/a.db?synchronous=normal&mode=rwc"),
            Ok(("sqlite://var/a.db?mode=rwc".into(), "Normal".into()))
        );
        assert_eq!(
            read("sqlite://var/a.db?synchronous=FULL"),
            Ok(("sqlite://var/a.db".into(), "Full".into()))
        );
        assert!(read("sqlite://var/a.db?synchronous=off").is_err());
    }

    #[test]
    fn finds_the_sqlite_folder() {
        assert_eq!(
            sqlite_folder("sqlite://var/a.db?mode=rwc").as_deref(),
            Some("var")
        );
        assert_eq!(
            sqlite_folder("sqlite:///tmp/x/a.db").as_deref(),
            Some("/tmp/x")
        );
        assert_eq!(sqlite_folder("sqlite::memory:"), None);
        assert_eq!(sqlite_folder("sqlite://a.db"), None);
    }
}
