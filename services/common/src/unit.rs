//! The unit of work: one database transaction holding a use case's effects (or a whole
//! batch of events' effects) and the events it publishes. Events are kept in memory while
//! the work runs and written to the outbox in one statement at [`UnitOfWork::commit`], which
//! then wakes the relay: a store cannot forget either step.
//!
//! Write RPCs open one with [`UnitOfWork::begin`], or share one with the calls arriving at
//! the same moment through a [`GroupCommit`]; event policies get one from the consumer
//! runner ([`crate::consumer`]), which has already written the batch's inbox rows into it.
//!
//! SQLite: begin with a write (the runner's inbox insert, an RPC's insert or conditional
//! update), so the transaction takes SQLite's write lock before it reads and never has to
//! upgrade a read snapshot, which SQLite refuses once another writer committed.

use crate::outbox::Outbox;
use crate::pb::{event_envelope::Payload, EventEnvelope};
use futures::FutureExt;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    QuerySelect, Select, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

/// One transaction and the events it will publish when it commits.
pub struct UnitOfWork {
    /// Everything the work changes goes through this transaction.
    txn: DatabaseTransaction,
    /// Where staged events go at commit, and whose relay is woken.
    outbox: Outbox,
    /// Events to publish if (and only if) the transaction commits.
    staged: Vec<EventEnvelope>,
}

impl UnitOfWork {
    /// Opens a transaction on `db` whose events go to `outbox`.
    pub async fn begin(db: &DatabaseConnection, outbox: &Outbox) -> Result<Self, DbErr> {
        Ok(Self {
            txn: db.begin().await?,
            outbox: outbox.clone(),
            staged: Vec::new(),
        })
    }

    /// The transaction, for the store's statements.
    pub fn db(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// SQLite or PostgreSQL: a few statements (row locks) differ.
    pub fn backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    /// `select` with its rows locked until the commit: `FOR UPDATE` on PostgreSQL; SQLite's
    /// transaction holds the database's write lock already.
    pub fn locked<E: EntityTrait>(&self, select: Select<E>) -> Select<E> {
        match self.backend() {
            DbBackend::Postgres => select.lock_exclusive(),
            _ => select,
        }
    }

    /// Publishes `envelope` if the work commits.
    pub fn stage(&mut self, envelope: EventEnvelope) {
        self.staged.push(envelope);
    }

    /// Events staged so far.
    pub fn staged(&self) -> &[EventEnvelope] {
        &self.staged
    }

    /// Writes the staged events, commits, and wakes the relay when there is something to
    /// publish.
    pub async fn commit(self) -> Result<(), DbErr> {
        let Self {
            txn,
            outbox,
            staged,
        } = self;
        outbox.write(&txn, &staged).await?;
        txn.commit().await?;
        if !staged.is_empty() {
            outbox.committed();
        }
        Ok(())
    }

    /// Drops every change and every staged event.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

/// A write use case whose concurrent calls share one transaction and one commit (group
/// commit): under a flash crowd, a hundred ReserveTicket calls cost one commit (one WAL
/// sync on SQLite, one flush on PostgreSQL) and a few statements, not a hundred of each.
#[async_trait::async_trait]
pub trait Grouped: Send + Sync + 'static {
    type Request: Send + Sync + 'static;
    type Answer: Send + 'static;

    /// Applies `calls` in `work`, answering each in order. It must not leave the
    /// transaction failed for a request that is refused (use `ON CONFLICT DO NOTHING`,
    /// conditional updates): an error fails the whole group.
    async fn apply(
        &self,
        work: &mut UnitOfWork,
        calls: &[Call<Self::Request>],
    ) -> Result<Vec<Self::Answer>, DbErr>;
}

/// One call of a grouped use case, with the caller's span: the events it causes join the
/// caller's trace although the group is committed by another task.
pub struct Call<R> {
    pub request: R,
    pub span: tracing::Span,
}

impl<R> Call<R> {
    /// A new event caused by this call (see [`crate::events::envelope`]).
    pub fn envelope(&self, reservation_id: i64, payload: Payload) -> EventEnvelope {
        self.span
            .in_scope(|| crate::events::envelope(reservation_id, payload))
    }
}

/// A request waiting for its group, and where its answer goes after the commit.
type Waiting<G> = (
    Call<<G as Grouped>::Request>,
    oneshot::Sender<Result<<G as Grouped>::Answer, DbErr>>,
);

/// Runs a [`Grouped`] use case: calls arriving while a group commits wait together for the
/// next one (at most `max` per group). Answers are given only after their commit.
pub struct GroupCommit<G: Grouped> {
    waiting: mpsc::Sender<Waiting<G>>,
}

impl<G: Grouped> Clone for GroupCommit<G> {
    fn clone(&self) -> Self {
        Self {
            waiting: self.waiting.clone(),
        }
    }
}

impl<G: Grouped> GroupCommit<G> {
    /// Starts the committing task; it ends when the last handle is dropped.
    pub fn spawn(use_case: G, db: DatabaseConnection, outbox: Outbox, max: usize) -> Self {
        let max = max.max(1);
        let (waiting, mut arrivals) = mpsc::channel::<Waiting<G>>(max * 4);
        tokio::spawn(async move {
            while let Some(first) = arrivals.recv().await {
                let mut group = vec![first];
                while group.len() < max {
                    match arrivals.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let (calls, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                // A panic in the use case fails its group, not every later call.
                let committed =
                    std::panic::AssertUnwindSafe(commit_group(&use_case, &db, &outbox, &calls))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            Err(DbErr::Custom("the group's use case panicked".into()))
                        });
                match committed {
                    Ok(answers) => {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            // A caller that gave up is fine: its work is committed anyway.
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, calls = replies.len(), "group commit failed");
                        for reply in replies {
                            let _ = reply.send(Err(DbErr::Custom(error.to_string())));
                        }
                    }
                }
            }
        });
        Self { waiting }
    }

    /// Runs `request` in the next group and returns its answer once that group committed.
    pub async fn call(&self, request: G::Request) -> Result<G::Answer, DbErr> {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            request,
            span: tracing::Span::current(),
        };
        self.waiting
            .send((call, reply))
            .await
            .map_err(|_| DbErr::Custom("the group commit task has stopped".into()))?;
        answer
            .await
            .map_err(|_| DbErr::Custom("the group commit task has stopped".into()))?
    }
}

async fn commit_group<G: Grouped>(
    use_case: &G,
    db: &DatabaseConnection,
    outbox: &Outbox,
    calls: &[Call<G::Request>],
) -> Result<Vec<G::Answer>, DbErr> {
    let mut work = UnitOfWork::begin(db, outbox).await?;
    let answers = match use_case.apply(&mut work, calls).await {
        Ok(answers) if answers.len() == calls.len() => answers,
        Ok(answers) => {
            work.rollback().await?;
            return Err(DbErr::Custom(format!(
                "{} answers for {} requests",
                answers.len(),
                calls.len()
            )));
        }
        Err(error) => {
            work.rollback().await?;
            return Err(error);
        }
    };
    work.commit().await?;
    Ok(answers)
}
