//! ferry's sync against automerge's own sync loop, side by side in one run: bytes on the wire
//! and round trips.
//!
//! Run: `cargo bench -p ferry-proto --bench sync`. The anchor is two documents passing
//! `generate_sync_message` / `receive_sync_message` back and forth from fresh (or kept) sync
//! states. The paper document is the automerge-paper editing trace (`testdata/`).

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../../store/tests/support/trace.rs"]
mod trace;

use automerge::sync::{State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT};
use ferry_store::{Access, DocId, DocKind};
use support::{Faults, Replica, sync, trust};

/// Bytes each way and round trips of automerge's own loop until both sides are quiet.
fn automerge_sync(
    a: &mut Automerge,
    b: &mut Automerge,
    sa: &mut State,
    sb: &mut State,
) -> (usize, usize) {
    let (mut bytes, mut trips) = (0, 0);
    loop {
        let m1 = a.generate_sync_message(sa);
        if let Some(m) = &m1 {
            let enc = m.clone().encode();
            bytes += enc.len();
            b.receive_sync_message(sb, automerge::sync::Message::decode(&enc).unwrap())
                .unwrap();
        }
        let m2 = b.generate_sync_message(sb);
        if let Some(m) = &m2 {
            let enc = m.clone().encode();
            bytes += enc.len();
            a.receive_sync_message(sa, automerge::sync::Message::decode(&enc).unwrap())
                .unwrap();
        }
        if m1.is_none() && m2.is_none() {
            return (bytes, trips);
        }
        trips += 1;
    }
}

fn friends() -> (Replica, Replica) {
    let (a, b) = (Replica::new(), Replica::new());
    trust(&a, &b, Access::ReadWrite);
    trust(&b, &a, Access::ReadWrite);
    (a, b)
}

/// Forgets every sync record between the two (and keeps the trust).
fn forget_sync_state(a: &Replica, b: &Replica) {
    for (x, y) in [(a, b), (b, a)] {
        let info = x.store.peer(y.store.peer_id()).unwrap().unwrap();
        x.store.remove_peer(y.store.peer_id()).unwrap();
        x.store.put_peer(&info).unwrap();
    }
}

fn row(what: &str, ferry: (usize, usize), anchor: (usize, usize)) {
    println!(
        "{what:44} {:>10} B {:>4} rt   {:>10} B {:>4} rt   {:>8.4}×",
        ferry.0,
        ferry.1,
        anchor.0,
        anchor.1,
        ferry.0 as f64 / anchor.0.max(1) as f64
    );
}

fn ferry_run(a: &Replica, b: &Replica) -> (usize, usize) {
    let run = sync(a, b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    (run.bytes[0] + run.bytes[1], run.turns)
}

/// `n` changes to `doc`, each writing a value never written before (automerge skips a put of
/// the value a key already holds).
fn edit(store: &ferry_store::Store, doc: DocId, key: &str, n: usize) {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
    for _ in 0..n {
        let value = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        store.change(doc, |tx| tx.put(ROOT, key, value)).unwrap();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sync bench: run with `cargo bench -p ferry-proto --bench sync`");
        return;
    }
    println!(
        "{:44} {:>17}   {:>17}   {:>9}",
        "", "ferry", "automerge sync", "ratio"
    );

    // The paper document, built in a store by 250-edit commits.
    let trace = trace::load();
    let (a, b) = friends();
    let doc = trace::build(&a.store, &trace, 250);
    let saved = a.store.read(doc, Automerge::save).unwrap();
    let paper = Automerge::load(&saved).unwrap();

    // Clone to an empty replica.
    let ferry = ferry_run(&a, &b);
    let anchor = automerge_sync(
        &mut paper.clone(),
        &mut Automerge::new(),
        &mut State::new(),
        &mut State::new(),
    );
    row("paper: clone to an empty replica", ferry, anchor);
    let cloned = b
        .store
        .read(doc, |d| {
            use automerge::ReadDoc;
            let (_, text) = d.get(ROOT, "text").unwrap().unwrap();
            d.text(&text).unwrap()
        })
        .unwrap();
    assert!(
        cloned == trace.end_content,
        "the clone's text is not the trace's end"
    );
    println!(
        "{:44} {:>10} B   (target: ferry <= 1.05 × save())",
        "  save()",
        saved.len()
    );

    // Identical, no stored sync state.
    forget_sync_state(&a, &b);
    let ferry = ferry_run(&a, &b);
    let anchor = automerge_sync(
        &mut paper.clone(),
        &mut paper.clone(),
        &mut State::new(),
        &mut State::new(),
    );
    row(
        "paper: identical, no stored state (<= 100 B)",
        ferry,
        anchor,
    );

    // Diverged by k changes on each side, with and without stored state.
    for k in [1, 100] {
        let (mut am_a, mut am_b) = (paper.clone(), paper.clone().with_actor(ActorId::random()));
        let (mut sa, mut sb) = (State::new(), State::new());
        automerge_sync(&mut am_a, &mut am_b, &mut sa, &mut sb);
        for i in 1..=k {
            am_a.transact(|tx| tx.put(ROOT, "a", i as i64)).unwrap();
            am_b.transact(|tx| tx.put(ROOT, "b", i as i64)).unwrap();
        }
        let (mut fresh_a, mut fresh_b) = (am_a.clone(), am_b.clone());
        let with_state = automerge_sync(&mut am_a, &mut am_b, &mut sa, &mut sb);
        let without = automerge_sync(
            &mut fresh_a,
            &mut fresh_b,
            &mut State::new(),
            &mut State::new(),
        );

        // ferry: a synced pair (so its sync state is stored), then k changes each.
        edit(&a.store, doc, "a", k);
        edit(&b.store, doc, "b", k);
        let ferry_with = ferry_run(&a, &b);
        row(
            &format!("paper: diverged by {k} each, stored state"),
            ferry_with,
            with_state,
        );
        edit(&a.store, doc, "a", k);
        edit(&b.store, doc, "b", k);
        forget_sync_state(&a, &b);
        let ferry_without = ferry_run(&a, &b);
        row(
            &format!("paper: diverged by {k} each, no stored state"),
            ferry_without,
            without,
        );
    }

    // 10,000 small documents.
    let (c, d) = friends();
    let mut docs = Vec::new();
    let mut ams = Vec::new();
    for i in 0..10_000 {
        let doc = c.store.create(DocKind::Automerge).unwrap();
        c.store
            .change(doc, |tx| tx.put(ROOT, "n", i as i64))
            .unwrap();
        ams.push(c.store.read(doc, |am| am.clone()).unwrap());
        docs.push(doc);
    }
    ferry_run(&c, &d);
    let ferry = ferry_run(&c, &d);
    let mut anchor = (0, 0);
    for am in &ams {
        let (bytes, trips) = automerge_sync(
            &mut am.clone(),
            &mut am.clone(),
            &mut State::new(),
            &mut State::new(),
        );
        anchor.0 += bytes;
        anchor.1 = anchor.1.max(trips);
    }
    row("10,000 docs, none changed (1 rt, <= 1 KB)", ferry, anchor);

    let mut change_bytes = 0;
    let mut anchor = (0, 0);
    for (i, doc) in docs.iter().enumerate().step_by(100) {
        let before = c.store.read(*doc, |am| am.get_heads()).unwrap();
        c.store
            .change(*doc, |tx| tx.put(ROOT, "n", -(i as i64)))
            .unwrap();
        change_bytes += c
            .store
            .read(*doc, |am| am.save_after(&before).len())
            .unwrap();
        let mut theirs = ams[i].clone();
        let mut mine = c.store.read(*doc, |am| am.clone()).unwrap();
        let (bytes, trips) =
            automerge_sync(&mut mine, &mut theirs, &mut State::new(), &mut State::new());
        anchor.0 += bytes;
        anchor.1 = anchor.1.max(trips);
    }
    let ferry = ferry_run(&c, &d);
    row("10,000 docs, 100 changed", ferry, anchor);
    println!(
        "{:44} {:>10} B   (target: ferry <= 2 × this + O(k log n))",
        "  the 100 changes themselves", change_bytes
    );
}
