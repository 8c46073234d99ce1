//! Fossil deltas between consecutive messages of a channel (the format of
//! Fossil SCM, which Centrifugo and its clients use for `delta: "fossil"`).
//!
//! The `fossil-delta` crate computes them; its functions take any bytes, and
//! the published data is untrusted input, so a panic in it is contained here
//! and turns into "no delta" (the message then goes whole) rather than
//! taking the dispatcher down.

/// The delta that turns `previous` into `current`, or `None` if it cannot be
/// computed.
pub(crate) fn compute(previous: &[u8], current: &[u8]) -> Option<Vec<u8>> {
    std::panic::catch_unwind(|| fossil_delta::delta(current, previous)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A JSON-like document of `peers` entries, some values varied by `seed`.
    fn doc(rng: &mut impl Rng, peers: usize) -> Vec<u8> {
        let mut s = String::from("{\"peers\":[");
        for i in 0..peers {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                "{{\"id\":\"peer-{i}\",\"status\":\"{}\",\"latency_ms\":{},\"name\":\"ŝtation {i} ✓\"}}",
                if rng.random_bool(0.9) { "online" } else { "degraded" },
                rng.random_range(1..500)
            ));
        }
        s.push_str("]}");
        s.into_bytes()
    }

    #[test]
    fn deltas_rebuild_the_current_message_exactly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut previous = doc(&mut rng, 50);
        for round in 0..300 {
            let current = match round % 5 {
                // Mostly small changes, sometimes unrelated or tiny inputs.
                0 => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
                1 => {
                    let peers = rng.random_range(0..3);
                    doc(&mut rng, peers)
                }
                _ => doc(&mut rng, 50),
            };
            let patch = compute(&previous, &current).expect("no panic");
            let rebuilt = fossil_delta::apply(&previous, &patch).expect("applies");
            assert_eq!(rebuilt, current, "round {round}");
            previous = current;
        }
    }

    #[test]
    fn a_small_change_makes_a_small_delta() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = doc(&mut rng, 100);
        let mut b = a.clone();
        let at = b.len() / 2;
        b[at] = b'X';
        let patch = compute(&a, &b).expect("no panic");
        assert!(patch.len() * 20 < b.len(), "{} of {}", patch.len(), b.len());
    }
}
