//! The semilattice laws, checked on states reachable by random histories of one universe
//! (states from unrelated universes could reuse a write's identity, which no real replica does).

use ferry_crdt::{GCounter, LwwRegister, MvRegister, PNCounter};
use proptest::prelude::*;

use super::sim::{Sim, Step, Subject, steps};

/// Three states of one universe: the replicas after a random history, picked by index.
fn three<T: Subject + 'static>() -> impl Strategy<Value = (usize, Vec<Step<T::Param>>, [usize; 3])>
{
    (
        2..=4usize,
        steps(T::param()),
        [0..4usize, 0..4usize, 0..4usize],
    )
}

fn check_laws<T: Subject>(
    n: usize,
    steps: &[Step<T::Param>],
    pick: [usize; 3],
) -> Result<(), TestCaseError> {
    let mut sim = Sim::<T>::new(n);
    sim.run(steps)?;
    let [a, b, c] = pick.map(|i| sim.replicas[i % n].clone());
    let join = |x: &T, y: &T| {
        let mut z = x.clone();
        z.merge(y);
        z
    };

    prop_assert_eq!(join(&a, &b), join(&b, &a), "not commutative");
    prop_assert_eq!(
        join(&join(&a, &b), &c),
        join(&a, &join(&b, &c)),
        "not associative"
    );
    prop_assert_eq!(join(&a, &a), a.clone(), "not idempotent");

    // `merge` reports a change exactly when there was one.
    let mut merged = a.clone();
    let changed = merged.merge(&b);
    prop_assert_eq!(changed, merged != a);

    // Merging an owned state is the same merge.
    let mut owned = a.clone();
    let owned_changed = owned.merge_owned(b.clone());
    prop_assert_eq!(owned_changed, changed);
    prop_assert_eq!(owned, merged);
    Ok(())
}

proptest! {
    #[test]
    fn gcounter_laws((n, steps, pick) in three::<GCounter>()) {
        check_laws::<GCounter>(n, &steps, pick)?;
    }

    #[test]
    fn pncounter_laws((n, steps, pick) in three::<PNCounter>()) {
        check_laws::<PNCounter>(n, &steps, pick)?;
    }

    #[test]
    fn lww_register_laws((n, steps, pick) in three::<LwwRegister<String>>()) {
        check_laws::<LwwRegister<String>>(n, &steps, pick)?;
    }

    #[test]
    fn mv_register_laws((n, steps, pick) in three::<MvRegister<String>>()) {
        check_laws::<MvRegister<String>>(n, &steps, pick)?;
    }
}
