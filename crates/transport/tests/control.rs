//! Control requests over real QUIC on loopback: the server hands them to
//! its `Control` with the authenticated sender key, answers in order, and
//! a sender whose key is not pinned gets nothing.

mod support;

use fjord_proto::admission::ServerCounters;
use fjord_proto::{PublicKey, RefuseCode, Request, Response, TargetSnapshot, TargetState};
use fjord_sink::FileSinkFactory;
use fjord_transport::client::{request, RequestOptions, SendError};
use fjord_transport::control::{Control, ResponseFuture};
use fjord_transport::server::{ServeOptions, Server};
use fjord_transport::Identity;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers for datasets under `backup/`, refuses others, records what it saw.
struct Recording {
    seen: Mutex<Vec<(PublicKey, Request)>>,
}

impl Control for Recording {
    fn handle<'a>(&'a self, peer: &'a PublicKey, request: Request) -> ResponseFuture<'a> {
        Box::pin(async move {
            self.seen
                .lock()
                .expect("lock")
                .push((*peer, request.clone()));
            if !request.dataset().starts_with("backup/") {
                return Response::Failed {
                    code: RefuseCode::BadDataset,
                    message: format!("{} is outside backup", request.dataset()),
                };
            }
            match request {
                Request::TargetState { dataset } => Response::TargetState(TargetState {
                    dataset,
                    exists: true,
                    snapshots: vec![TargetSnapshot {
                        name: "fjord_2026-11-25T133000Z".into(),
                        guid: 42,
                        createtxg: 7,
                        creation: 1_795_613_400,
                    }],
                    resume_token: Some("1-10c0b0a2e0-c0-789c".into()),
                    written: 0,
                }),
                other => Response::Done {
                    message: format!("did {other:?}"),
                },
            }
        })
    }
}

fn start(allowed: &[&Identity]) -> (Server, Identity, Arc<Recording>, tempfile::TempDir) {
    let identity = Identity::generate().expect("keygen");
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Arc::new(Recording {
        seen: Mutex::new(Vec::new()),
    });
    let opts = ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allowed: allowed.iter().map(|i| i.public_key()).collect(),
        link: support::fast_link(),
        grace: Duration::from_secs(10),
        max_sessions: 0,
        limits: Default::default(),
        chunk_cache: None,
    };
    let factory = Arc::new(FileSinkFactory::new(dir.path().to_path_buf(), 1 << 20));
    let server =
        Server::bind_with_control(&identity, opts, factory, control.clone()).expect("bind");
    (server, identity, control, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_in_order_with_the_authenticated_key() {
    support::init_tracing();
    let sender = Identity::generate().expect("keygen");
    let (server, server_id, control, _dir) = start(&[&sender]);
    let opts = RequestOptions {
        to: server.local_addr().expect("addr"),
        server_key: server_id.public_key(),
        link: support::fast_link(),
        patience: Duration::from_secs(10),
    };
    let requests = vec![
        Request::TargetState {
            dataset: "backup/fs".into(),
        },
        Request::TargetState {
            dataset: "tank/elsewhere".into(),
        },
        Request::DestroySnapshots {
            dataset: "backup/fs".into(),
            snapshots: vec!["old".into()],
        },
    ];
    let responses = request(&sender, &opts, &requests).await.expect("request");
    assert_eq!(responses.len(), 3);
    match &responses[0] {
        Response::TargetState(t) => {
            assert_eq!(t.dataset, "backup/fs");
            assert_eq!(t.snapshots[0].guid, 42);
            assert_eq!(t.resume_token.as_deref(), Some("1-10c0b0a2e0-c0-789c"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &responses[1],
        Response::Failed { code: RefuseCode::BadDataset, message } if message.contains("tank/elsewhere")
    ));
    assert!(matches!(&responses[2], Response::Done { message } if message.contains("old")));
    let seen = control.seen.lock().expect("lock");
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(k, _)| *k == sender.public_key()));
    assert_eq!(seen[2].1, requests[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_key_gets_no_answer_and_reaches_no_control() {
    support::init_tracing();
    let sender = Identity::generate().expect("keygen");
    let stranger = Identity::generate().expect("keygen");
    let (server, server_id, control, _dir) = start(&[&sender]);
    let opts = RequestOptions {
        to: server.local_addr().expect("addr"),
        server_key: server_id.public_key(),
        link: support::fast_link(),
        patience: Duration::from_secs(10),
    };
    let err = request(
        &stranger,
        &opts,
        &[Request::TargetState {
            dataset: "backup/fs".into(),
        }],
    )
    .await
    .expect_err("must be refused");
    assert!(matches!(err, SendError::KeyRefused { .. }), "{err}");
    assert!(control.seen.lock().expect("lock").is_empty());
}

/// Answers every request, but holds requests about `backup/slow` until
/// the gate opens.
struct Gated {
    gate: tokio::sync::Semaphore,
    entered: std::sync::atomic::AtomicUsize,
}

impl Control for Gated {
    fn handle<'a>(&'a self, _peer: &'a PublicKey, request: Request) -> ResponseFuture<'a> {
        Box::pin(async move {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if request.dataset() == "backup/slow" {
                let _permit = self.gate.acquire().await;
            }
            Response::TargetState(TargetState {
                dataset: request.dataset().to_string(),
                ..TargetState::default()
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_request_limit_is_retried_and_others_are_served() {
    support::init_tracing();
    let busy_key = Identity::generate().expect("keygen");
    let other_key = Identity::generate().expect("keygen");
    let identity = Identity::generate().expect("keygen");
    let dir = tempfile::tempdir().expect("tempdir");
    let control = Arc::new(Gated {
        gate: tokio::sync::Semaphore::new(0),
        entered: Default::default(),
    });
    let opts = ServeOptions {
        link: support::fast_link(),
        limits: fjord_proto::admission::Limits {
            per_client_requests: 1,
            ..Default::default()
        },
        ..ServeOptions::new(
            "127.0.0.1:0".parse().expect("addr"),
            vec![busy_key.public_key(), other_key.public_key()],
        )
    };
    let factory = Arc::new(FileSinkFactory::new(dir.path().to_path_buf(), 1 << 20));
    let server =
        Server::bind_with_control(&identity, opts, factory, control.clone()).expect("bind");
    let opts = RequestOptions {
        to: server.local_addr().expect("addr"),
        server_key: identity.public_key(),
        link: support::fast_link(),
        patience: Duration::from_secs(60),
    };
    let ask = |id: Arc<Identity>, dataset: &str| {
        let opts = opts.clone();
        let requests = vec![Request::TargetState {
            dataset: dataset.into(),
        }];
        tokio::spawn(async move { request(&id, &opts, &requests).await })
    };
    let busy_key = Arc::new(busy_key);
    let slow = ask(busy_key.clone(), "backup/slow");
    support::wait_until(
        "the slow request is in progress",
        Duration::from_secs(30),
        || control.entered.load(std::sync::atomic::Ordering::SeqCst) == 1,
    )
    .await;
    // The same key's second request is answered busy, and asks again.
    let second = ask(busy_key, "backup/fast");
    let counters = server.counters();
    support::wait_until(
        "the second request was refused busy",
        Duration::from_secs(30),
        || ServerCounters::get(&counters.refused_limit) >= 1,
    )
    .await;
    // Another key is served meanwhile.
    let other = ask(Arc::new(other_key), "backup/other")
        .await
        .expect("task")
        .expect("the other key is served");
    assert!(matches!(&other[0], Response::TargetState(t) if t.dataset == "backup/other"));
    assert!(!second.is_finished());
    control.gate.add_permits(16);
    for (task, dataset) in [(slow, "backup/slow"), (second, "backup/fast")] {
        let r = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("answered")
            .expect("task")
            .unwrap_or_else(|e| panic!("{dataset}: {e}"));
        assert!(
            matches!(&r[0], Response::TargetState(t) if t.dataset == dataset),
            "{r:?}"
        );
    }
}
