//! openraft's storage conformance suite on the redb log store and the
//! store-backed state machine.

use openraft::testing::{StoreBuilder, Suite};

use super::typ::StorageError;
use super::{LogStore, StateMachine, TypeConfig};
use crate::store::{Durability, Store};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("log.redb")).expect("open log");
        let store =
            Store::open(dir.path().join("store.redb"), Durability::Eventual).expect("open store");
        Ok((dir, log, StateMachine::new(store)))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), StorageError> {
    Suite::test_all(RedbBuilder)
}
