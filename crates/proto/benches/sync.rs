//! ferry's sync against automerge's own sync loop, side by side in one run: bytes on the wire
//! and round trips.
//!
//! Run: `cargo bench -p ferry-proto --bench sync`. The anchor is two documents passing
//! `generate_sync_message` / `receive_sync_message` back and forth from fresh (or kept) sync
//! states. The paper document is the automerge-paper editing trace (`testdata/`), one change
//! per keystroke: 259,778 changes, as in the anchor figures the targets were set against.

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;
// Shared with the store's tests, which also build the trace into a store.
#[allow(dead_code)]
#[path = "../../store/tests/support/trace.rs"]
mod trace;
// Shared with the net crate's bench.
#[path = "support/anchor.rs"]
mod anchor;

use std::time::Instant;

use automerge::sync::State;
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT, ReadDoc};
use ferry_store::{Access, DocId, DocKind, Origin, Store};
use support::{Faults, Replica, Run, sync, trust};

fn friends() -> (Replica, Replica) {
    let (a, b) = (Replica::new(), Replica::new());
    trust(&a, &b, Access::ReadWrite);
    trust(&b, &a, Access::ReadWrite);
    (a, b)
}

/// Forgets every sync record between the two (and keeps the trust and grants).
fn forget_sync_state(a: &Replica, b: &Replica) {
    for (x, y) in [(a, b), (b, a)] {
        let peer = y.store.peer_id();
        let info = x.store.peer(peer).unwrap().unwrap();
        let grants = x.store.grants(peer).unwrap();
        x.store.remove_peer(peer).unwrap();
        x.store.put_peer(&info).unwrap();
        for (space, access) in grants {
            x.store.grant(peer, space, access).unwrap();
        }
    }
}

fn row(what: &str, ferry: (usize, usize), anchor: (usize, usize)) {
    println!(
        "{what:46} {:>10} B {:>4} rt   {:>10} B {:>4} rt   {:>8.4}×",
        ferry.0,
        ferry.1,
        anchor.0,
        anchor.1,
        ferry.0 as f64 / anchor.0.max(1) as f64
    );
}

fn ferry_run(a: &Replica, b: &Replica) -> Run {
    let run = sync(a, b, Faults::default());
    assert!(run.error.is_none(), "{:?}", run.error);
    run
}

fn total(run: &Run) -> (usize, usize) {
    (run.bytes[0] + run.bytes[1], run.turns)
}

/// Bytes of reconciliation frames (type 3) in a run, both ways.
fn reconcile_bytes(run: &Run) -> usize {
    run.sent
        .iter()
        .flatten()
        .filter(|f| f.get(4) == Some(&3))
        .map(Vec::len)
        .sum()
}

/// `n` changes to `doc`, each writing a value never written before (automerge skips a put of
/// the value a key already holds).
fn edit(store: &Store, doc: DocId, key: &str, n: usize) {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
    for _ in 0..n {
        let value = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        store.change(doc, |tx| tx.put(ROOT, key, value)).unwrap();
    }
}

/// Puts a saved document into `store` as a new document.
fn import(store: &Store, saved: &[u8]) -> DocId {
    let doc = store.create(DocKind::Automerge).unwrap();
    store
        .update(doc, Origin::Local, |am| am.load_incremental(saved))
        .unwrap();
    doc
}

/// `n` small documents on `c`, each with one change; returns them and their in-memory copies.
fn small_docs(c: &Replica, n: usize) -> (Vec<DocId>, Vec<Automerge>) {
    let mut docs = Vec::new();
    let mut ams = Vec::new();
    for i in 0..n {
        let doc = c.store.create(DocKind::Automerge).unwrap();
        c.store
            .change(doc, |tx| tx.put(ROOT, "n", i as i64))
            .unwrap();
        ams.push(c.store.read(doc, |am| am.clone()).unwrap());
        docs.push(doc);
    }
    (docs, ams)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sync bench: run with `cargo bench -p ferry-proto --bench sync`");
        return;
    }
    let trace = trace::load();
    let started = Instant::now();
    let paper = trace::one_change_per_edit(&trace);
    let saved = paper.save();
    println!(
        "paper document: {} changes, save() {} B, built in {:.1} s",
        paper.get_changes(&[]).len(),
        saved.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:46} {:>17}   {:>17}   {:>9}",
        "", "ferry", "automerge sync", "ratio"
    );

    let (a, b) = friends();
    let doc = import(&a.store, &saved);

    // Clone to an empty replica.
    let ferry = total(&ferry_run(&a, &b));
    let anchor = anchor::automerge_sync(
        &mut paper.clone(),
        &mut Automerge::new(),
        &mut State::new(),
        &mut State::new(),
    );
    row("paper: clone to an empty replica", ferry, anchor);
    let cloned = b
        .store
        .read(doc, |d| {
            let (_, text) = d.get(ROOT, "text").unwrap().unwrap();
            d.text(&text).unwrap()
        })
        .unwrap();
    assert!(
        cloned == trace.end_content,
        "the clone's text is not the trace's end"
    );
    println!(
        "{:46} {:>10} B   ferry / save() = {:.4} (target <= 1.05)",
        "  save()",
        saved.len(),
        ferry.0 as f64 / saved.len() as f64
    );

    // Identical, no stored sync state.
    forget_sync_state(&a, &b);
    let ferry = total(&ferry_run(&a, &b));
    let anchor = anchor::automerge_sync(
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
        anchor::automerge_sync(&mut am_a, &mut am_b, &mut sa, &mut sb);
        let before = am_a.get_heads();
        for i in 1..=k {
            am_a.transact(|tx| tx.put(ROOT, "a", i as i64)).unwrap();
            am_b.transact(|tx| tx.put(ROOT, "b", i as i64)).unwrap();
        }
        let change_bytes = am_a.save_after(&before).len() + am_b.save_after(&before).len();
        let (mut fresh_a, mut fresh_b) = (am_a.clone(), am_b.clone());
        let with_state = anchor::automerge_sync(&mut am_a, &mut am_b, &mut sa, &mut sb);
        let without = anchor::automerge_sync(
            &mut fresh_a,
            &mut fresh_b,
            &mut State::new(),
            &mut State::new(),
        );

        // ferry: a synced pair (so its sync state is stored), then k changes each.
        edit(&a.store, doc, "a", k);
        edit(&b.store, doc, "b", k);
        let ferry_with = total(&ferry_run(&a, &b));
        row(
            &format!("paper: diverged by {k} each, stored state"),
            ferry_with,
            with_state,
        );
        edit(&a.store, doc, "a", k);
        edit(&b.store, doc, "b", k);
        forget_sync_state(&a, &b);
        let ferry_without = total(&ferry_run(&a, &b));
        row(
            &format!("paper: diverged by {k} each, no stored state"),
            ferry_without,
            without,
        );
        println!(
            "{:46} {:>10} B   ferry with state / changes = {:.2}",
            "  the changes themselves",
            change_bytes,
            ferry_with.0 as f64 / change_bytes as f64
        );
    }

    // Many small documents: none changed, then 100 changed.
    for n in [1_000, 10_000] {
        let (c, d) = friends();
        let (docs, ams) = small_docs(&c, n);
        ferry_run(&c, &d);
        let ferry = total(&ferry_run(&c, &d));
        let mut anchor = (0, 0);
        for am in &ams {
            let (bytes, trips) = anchor::automerge_sync(
                &mut am.clone(),
                &mut am.clone(),
                &mut State::new(),
                &mut State::new(),
            );
            anchor.0 += bytes;
            anchor.1 = anchor.1.max(trips);
        }
        row(
            &format!("{n} docs, none changed (1 rt, <= 1 KB)"),
            ferry,
            anchor,
        );

        let k = 100;
        let mut change_bytes = 0;
        let mut anchor = (0, 0);
        for (i, doc) in docs.iter().enumerate().step_by(n / k) {
            let before = c.store.read(*doc, |am| am.get_heads()).unwrap();
            c.store
                .change(*doc, |tx| tx.put(ROOT, "n", -(i as i64) - 1))
                .unwrap();
            change_bytes += c
                .store
                .read(*doc, |am| am.save_after(&before).len())
                .unwrap();
            let mut theirs = ams[i].clone();
            let mut mine = c.store.read(*doc, |am| am.clone()).unwrap();
            let (bytes, trips) = anchor::automerge_sync(
                &mut mine,
                &mut theirs,
                &mut State::new(),
                &mut State::new(),
            );
            anchor.0 += bytes;
            anchor.1 = anchor.1.max(trips);
        }
        let run = ferry_run(&c, &d);
        let ferry = total(&run);
        let reconcile = reconcile_bytes(&run);
        row(&format!("{n} docs, {k} changed"), ferry, anchor);
        println!(
            "{:46} {:>10} B   per-document part {} B = {:.2} × the changes (target <= 2)",
            "  the changes themselves",
            change_bytes,
            ferry.0 - reconcile,
            (ferry.0 - reconcile) as f64 / change_bytes as f64
        );
        println!(
            "{:46} {:>10} B   = {:.0} B per changed document",
            "  reconciliation (the O(k log n) part)",
            reconcile,
            reconcile as f64 / k as f64
        );
    }
}
