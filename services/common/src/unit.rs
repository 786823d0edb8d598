//! The unit of work: one database transaction holding a use case's effects (or a whole
//! batch of events' effects) and the events it publishes. Events are kept in memory while
//! the work runs and written to the outbox in one statement at [`UnitOfWork::commit`], which
//! then wakes the relay: a store cannot forget either step.
//!
//! Write RPCs open one with [`UnitOfWork::begin`]; event policies get one from the consumer
//! runner ([`crate::consumer`]), which has already written the batch's inbox rows into it.
//!
//! SQLite: begin with a write (the runner's inbox insert, an RPC's insert or conditional
//! update), so the transaction takes SQLite's write lock before it reads and never has to
//! upgrade a read snapshot, which SQLite refuses once another writer committed.

use crate::outbox::Outbox;
use crate::pb::EventEnvelope;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait,
};

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
