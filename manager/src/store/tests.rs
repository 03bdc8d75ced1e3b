use agent_common::objects::{Kind, Network, Node, Object, Service};

use super::*;

fn svc(name: &str) -> Service {
    Service {
        name: name.into(),
        image: "busybox".into(),
        replicas: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn create_update_delete_with_versions() {
    let store = Store::new_local();
    let s = store.create(svc("web")).await.unwrap();
    assert!(!s.meta.id.is_empty());
    assert_eq!(s.meta.version, 1);
    assert!(s.meta.created_at > 0);

    let mut s2 = s.clone();
    s2.replicas = 3;
    let s2 = store.put(s2).await.unwrap();
    assert_eq!(s2.meta.version, 2);
    assert_eq!(s2.meta.created_at, s.meta.created_at);

    // A write based on the old version is refused with a typed conflict.
    let mut stale = s.clone();
    stale.replicas = 5;
    let err = store.put(stale).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(
        err.refusal(),
        Some(&Refusal::Conflict {
            kind: Kind::Service,
            id: s.meta.id.clone(),
            expected: 1,
            actual: 2
        })
    );
    assert!(err.to_string().contains("version conflict"), "{err}");
    assert_eq!(
        store
            .view(|tx| tx.get::<Service>(&s.meta.id))
            .unwrap()
            .replicas,
        3
    );

    store
        .update(vec![Action::Delete {
            kind: Kind::Service,
            id: s.meta.id.clone(),
            version: Some(2),
        }])
        .await
        .unwrap();
    assert!(store.view(|tx| tx.get::<Service>(&s.meta.id)).is_none());
}

#[tokio::test]
async fn a_refused_batch_changes_nothing() {
    let store = Store::new_local();
    let a = store.create(svc("a")).await.unwrap();
    let err = store
        .update(vec![
            Action::Create(svc("b").into()),
            Action::Create(
                Network {
                    name: "net".into(),
                    ..Default::default()
                }
                .into(),
            ),
            Action::Update(Object::Service(Service {
                replicas: 9,
                meta: Meta {
                    version: 0,
                    ..a.meta.clone()
                },
                ..a.clone()
            })),
        ])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    // The refused batch consumed a version (as a refused Raft entry consumes
    // a log index) but changed no object.
    assert_eq!(store.view(|tx| tx.len()), 1);
    assert_eq!(store.view(|tx| tx.get::<Service>(&a.meta.id)).unwrap(), a);
    assert!(store.view(|tx| tx.get_by_name::<Service>("b")).is_none());
}

use agent_common::objects::Meta;

#[tokio::test]
async fn unique_names_and_ids() {
    let store = Store::new_local();
    let a = store.create(svc("web")).await.unwrap();
    let err = store.create(svc("web")).await.unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::NameInUse { .. })),
        "{err}"
    );
    let mut dup = svc("other");
    dup.meta.id = a.meta.id.clone();
    let err = store.create(dup).await.unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::AlreadyExists { .. })),
        "{err}"
    );
    // Renaming frees the old name within the same batch.
    let mut renamed = a.clone();
    renamed.name = "web2".into();
    store
        .update(vec![
            Action::Update(renamed.into()),
            Action::Create(svc("web").into()),
        ])
        .await
        .unwrap();
    assert!(store.view(|tx| tx.get_by_name::<Service>("web")).is_some());
    assert_eq!(
        store
            .view(|tx| tx.get_by_name::<Service>("web2"))
            .unwrap()
            .meta
            .id,
        a.meta.id
    );
    let err = store.create(svc("")).await.unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::Invalid { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn view_and_watch_sees_every_later_commit_once() {
    let store = Store::new_local();
    store.create(svc("before")).await.unwrap();
    let (n, mut watch) = store.view_and_watch(|tx| tx.list::<Service>().len());
    assert_eq!(n, 1);
    let node = store
        .create(Node {
            hostname: "h1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = watch.recv().await.unwrap();
    assert_eq!(c.version, node.meta.version);
    assert!(matches!(&c.changes[..], [Change::Created(Object::Node(n))] if n.hostname == "h1"));
    // A refused batch publishes nothing.
    let mut stale = node.clone();
    stale.meta.version = 0;
    assert!(store.put(stale).await.is_err());
    let mut n2 = node.clone();
    n2.hostname = "h2".into();
    store.put(n2).await.unwrap();
    let c = watch.recv().await.unwrap();
    assert!(
        matches!(&c.changes[..], [Change::Updated { old: Object::Node(o), new: Object::Node(n) }] if o.hostname == "h1" && n.hostname == "h2")
    );
    assert!(watch.try_recv().is_err());
}

#[tokio::test]
async fn persisted_store_reloads_tables_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let id = {
        let store = Store::open(&path, Durability::Immediate).unwrap();
        let s = store.create(svc("web")).await.unwrap();
        let n = store.create(Node::default()).await.unwrap();
        store
            .update(vec![Action::Delete {
                kind: Kind::Node,
                id: n.meta.id,
                version: None,
            }])
            .await
            .unwrap();
        s.meta.id
    };
    let store = Store::open(&path, Durability::Immediate).unwrap();
    assert_eq!(store.version(), 3);
    assert_eq!(store.view(|tx| tx.len()), 1);
    let s = store.view(|tx| tx.get::<Service>(&id)).unwrap();
    assert_eq!(s.meta.version, 1);
    // Versions keep growing after a reopen.
    let s = store.put(s).await.unwrap();
    assert_eq!(s.meta.version, 4);
    assert_eq!(
        store
            .view(|tx| tx.get_by_name::<Service>("web"))
            .unwrap()
            .meta
            .id,
        id
    );
}

#[tokio::test]
async fn install_publishes_the_difference() {
    let a = Store::new_local();
    a.create(svc("x")).await.unwrap();
    let y = a.create(svc("y")).await.unwrap();
    let (data, _) = a.export().unwrap();

    let b = Store::new_local();
    b.create(svc("z")).await.unwrap();
    let mut w = b.watch();
    b.install(&data, b"applied".to_vec()).unwrap();
    assert_eq!(b.version(), y.meta.version);
    let c = w.recv().await.unwrap();
    let created = c
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Created(_)))
        .count();
    let deleted = c
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Deleted(_)))
        .count();
    assert_eq!((created, deleted), (2, 1));
    assert!(b.view(|tx| tx.get_by_name::<Service>("y")).is_some());
    assert_eq!(b.applied_blob().as_deref(), Some(&b"applied"[..]));
}

#[test]
fn ids_are_25_base36_chars_and_distinct() {
    let a = new_id();
    assert_eq!(a.len(), 25);
    assert!(a
        .bytes()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    assert_ne!(a, new_id());
}
