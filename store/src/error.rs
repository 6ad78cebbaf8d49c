//! [`StoreError`], the crate's one error type: what a store call can fail
//! with, whichever backend answered.

use flashsale_engine::EngineError;
use flashsale_journal::JournalError;

/// What a [`crate::Store`] call can fail with. The gateway maps each
/// variant to the contract's status and code in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A refusal of the engine's rules (sold out, limit, funds…), from
    /// either backend.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// One node: the journal could not make an accepted change durable.
    #[error("the change could not be made durable")]
    Journal(#[source] JournalError),
    /// Multi-node mode: Redis did not answer, refused, or the books are
    /// behind ([`flashsale_redis::Error`]; its refusals arrive as
    /// [`StoreError::Engine`]).
    #[error(transparent)]
    Redis(flashsale_redis::Error),
    /// A blocking task (a draw) failed.
    #[error("a store task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl From<flashsale_redis::Error> for StoreError {
    /// A Redis refusal is the engine's refusal; the rest stay Redis'.
    fn from(error: flashsale_redis::Error) -> StoreError {
        match error {
            flashsale_redis::Error::Engine(refusal) => StoreError::Engine(refusal),
            other => StoreError::Redis(other),
        }
    }
}
