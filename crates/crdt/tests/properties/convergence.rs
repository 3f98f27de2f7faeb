//! 2 to 6 replicas run random histories, then exchange states in random orders: every replica
//! ends with the same state and digest, and that state is what a plain model says.

use ferry_crdt::{GCounter, LwwRegister, MvRegister, PNCounter};
use proptest::prelude::*;

use super::sim::{Sim, Step, Subject, steps};

/// A history: a replica count, its steps, and two orders in which to merge everything.
type History<P> = (usize, Vec<Step<P>>, Vec<usize>, Vec<usize>);

fn history<T: Subject + 'static>() -> impl Strategy<Value = History<T::Param>> {
    (2..=6usize).prop_flat_map(|n| {
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        (Just(n), steps(T::param()), order.clone(), order)
    })
}

/// Runs the history, settles it, checks every replica holds one state with one digest whatever
/// the merge order, and returns the simulation for the type's own model check.
fn converge<T: Subject>(
    n: usize,
    steps: &[Step<T::Param>],
    order: &[usize],
    other_order: &[usize],
) -> Result<Sim<T>, TestCaseError> {
    let mut sim = Sim::<T>::new(n);
    sim.run(steps)?;

    let mut alternative = T::default();
    for i in other_order {
        alternative.merge(&sim.replicas[*i]);
    }
    let settled = sim.settle(order);
    prop_assert_eq!(&settled, &alternative, "merge order changed the result");

    let digest = settled.digest().expect("encodes");
    for replica in &sim.replicas {
        prop_assert_eq!(replica, &settled);
        prop_assert_eq!(replica.digest().expect("encodes"), digest);
    }
    Ok(sim)
}

proptest! {
    #[test]
    fn gcounters_count_every_increment_once((n, steps, order, other) in history::<GCounter>()) {
        let sim = converge::<GCounter>(n, &steps, &order, &other)?;
        // Only accepted increments are logged; an overflowing one was refused and is not.
        let expected: u128 = sim.writes.iter().map(|w| u128::from(w.param)).sum();
        prop_assert_eq!(sim.replicas[0].value(), expected);
        let tried = steps.iter().filter(|s| matches!(s, Step::Write { .. })).count();
        let huge = steps.iter().any(|s| matches!(s, Step::Write { param, .. } if *param > u64::MAX - 4));
        prop_assert!(tried == sim.writes.len() || huge, "a write was refused without overflow");
    }

    #[test]
    fn pncounters_count_every_change_once((n, steps, order, other) in history::<PNCounter>()) {
        let sim = converge::<PNCounter>(n, &steps, &order, &other)?;
        let expected: i128 = sim
            .writes
            .iter()
            .map(|w| match w.param {
                (true, by) => i128::from(by),
                (false, by) => -i128::from(by),
            })
            .sum();
        prop_assert_eq!(sim.replicas[0].value(), expected);
    }

    #[test]
    fn lww_registers_keep_the_greatest_stamp(
        (n, steps, order, other) in history::<LwwRegister<String>>()
    ) {
        let sim = converge::<LwwRegister<String>>(n, &steps, &order, &other)?;
        let last = sim.writes.iter().max_by_key(|w| w.delta.stamp());
        let expected = last.map(|w| format!("v{}", w.param));
        prop_assert_eq!(sim.replicas[0].get().cloned(), expected);
        // Stamps are unique, so the winner is never a matter of the tie-break on values.
        let stamps: std::collections::BTreeSet<_> =
            sim.writes.iter().map(|w| w.delta.stamp()).collect();
        prop_assert_eq!(stamps.len(), sim.writes.len());
    }

    #[test]
    fn mv_registers_keep_exactly_the_concurrent_writes(
        (n, steps, order, other) in history::<MvRegister<String>>()
    ) {
        let sim = converge::<MvRegister<String>>(n, &steps, &order, &other)?;
        let expected: Vec<(ferry_crdt::Dot, String)> = sim
            .maximal_writes()
            .into_iter()
            .flat_map(|w| sim.writes[w].delta.entries().map(|(d, v)| (d, v.clone())).collect::<Vec<_>>())
            .collect();
        let mut expected = expected;
        expected.sort();
        let held: Vec<_> = sim.replicas[0].entries().map(|(d, v)| (d, v.clone())).collect();
        prop_assert_eq!(held, expected);
    }
}
