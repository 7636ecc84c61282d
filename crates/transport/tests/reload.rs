//! A reload of the pinned keys (`fjord-recv serve` on SIGHUP calls
//! [`Server::set_allowed`]), over real QUIC on loopback: a transfer under
//! way when its key is removed goes on to the end, byte-identical; a new
//! transfer on that key's open connection is refused with the policy
//! code, and so is a new connection of it (TLS); a key added by the
//! reload connects and transfers.

mod support;

use fjord_proto::admission::ServerCounters;
use fjord_proto::{BackoffConfig, RefuseCode, SessionError};
use fjord_transport::client::{Counters, Link, LinkOptions, SendError, TransferOptions};
use fjord_transport::Identity;
use std::io::Cursor;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// A failure guard, never a measurement.
const GUARD: Duration = Duration::from_secs(90);

fn link_to(sender: &Identity, rx: &Receiver) -> Link {
    let mut opts = LinkOptions::new(rx.addr, rx.identity.public_key());
    opts.link = fast_link();
    Link::new(sender, opts).expect("link")
}

fn transfer(dataset: &str, rate_limit: Option<u64>) -> TransferOptions {
    let mut t = TransferOptions::new(offer(dataset));
    t.grace = Duration::from_secs(60);
    t.rate_limit = rate_limit;
    t.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_running_transfers_pins_added_keys_and_refuses_removed_ones() {
    init_tracing();
    let old = Identity::generate().unwrap();
    let new = Identity::generate().unwrap();
    let rx = start_receiver(&[&old], fast_link(), Duration::from_secs(60));

    // A transfer of 8 MiB at 4 MiB/s from the key the reload removes.
    let link = link_to(&old, &rx);
    let data = synthetic(8, 1);
    let counters = Arc::new(Counters::default());
    let running = {
        let (link, data, counters) = (link.clone(), data.clone(), counters.clone());
        tokio::spawn(async move {
            link.send(
                transfer("backup/running", Some(4 << 20)),
                Cursor::new(data),
                counters,
            )
            .await
        })
    };
    wait_until("the transfer is under way", GUARD, || {
        counters.acked.load(Relaxed) > 0
    })
    .await;

    rx.server.set_allowed(vec![new.public_key()]);
    let acked_at_reload = counters.acked.load(Relaxed);
    let refused_before = ServerCounters::get(&rx.server.counters().refused_other);

    // A new transfer on the removed key's open connection: refused.
    let err = link
        .send(
            transfer("backup/after", None),
            Cursor::new(synthetic(1, 2)),
            Arc::new(Counters::default()),
        )
        .await
        .expect_err("a removed key's new transfer is refused");
    assert!(
        matches!(
            &err,
            SendError::Session(SessionError::Refused {
                code: RefuseCode::Policy,
                reason
            }) if reason.contains("no longer a configured client")
        ),
        "{err}"
    );
    // the server counts the refusal after sending it: wait, do not race it
    wait_until("the refusal is counted", GUARD, || {
        ServerCounters::get(&rx.server.counters().refused_other) > refused_before
    })
    .await;
    // A new connection of the removed key: refused in the handshake.
    let err = link_to(&old, &rx)
        .send(
            transfer("backup/again", None),
            Cursor::new(synthetic(1, 3)),
            Arc::new(Counters::default()),
        )
        .await
        .expect_err("a removed key cannot connect");
    assert!(matches!(err, SendError::KeyRefused { .. }), "{err}");
    // Both refusals are counted by code and key, for the metrics.
    let refusals = rx.server.refusals();
    assert!(
        refusals
            .iter()
            .any(|r| r.code == "policy" && r.key == Some(old.public_key()) && r.count == 1),
        "{refusals:?}"
    );
    assert!(
        refusals
            .iter()
            .any(|r| r.code == "not_pinned" && r.key.is_none() && r.count >= 1),
        "{refusals:?}"
    );

    // The transfer under way at the reload ends, whole.
    let out = tokio::time::timeout(GUARD, running)
        .await
        .expect("in time")
        .expect("task")
        .expect("the running transfer completes");
    assert_eq!(out.length, data.len() as u64);
    assert!(
        acked_at_reload < data.len() as u64,
        "the transfer had ended before the reload ({acked_at_reload} bytes acknowledged)"
    );
    assert_eq!(stored(rx.dir.path(), "backup/running"), Some(data));
    assert_eq!(stored(rx.dir.path(), "backup/after"), None);

    // The key the reload added connects and transfers.
    let added = synthetic(1, 4);
    link_to(&new, &rx)
        .send(
            transfer("backup/added", None),
            Cursor::new(added.clone()),
            Arc::new(Counters::default()),
        )
        .await
        .expect("the added key's transfer");
    assert_eq!(stored(rx.dir.path(), "backup/added"), Some(added));
}
