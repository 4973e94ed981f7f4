//! The inputs a target sees: mostly its seeds, each changed by a few byte-level mutations
//! (bit flips, interesting integers at any offset, insertions, removals, truncation, splices of
//! another seed), and sometimes plain random bytes. A proptest strategy, so runs are seeded and
//! a failing input is shrunk.

use proptest::prelude::*;
use std::sync::Arc;

/// Integers that sit on the edges decoders get wrong, written little-endian.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Integer {
        at: usize,
        width: usize,
        value: u64,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    Splice {
        seed: usize,
        from: usize,
        len: usize,
        at: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        2 => (any::<usize>(), prop::sample::select(vec![1usize, 2, 4, 8]), prop::sample::select(INTERESTING.to_vec()))
            .prop_map(|(at, width, value)| Mutation::Integer { at, width, value }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..32).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), any::<usize>(), 1usize..64, any::<usize>())
            .prop_map(|(seed, from, len, at)| Mutation::Splice { seed, from, len, at }),
    ]
}

fn apply(input: &mut Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) {
    let n = input.len();
    let pos = |at: usize, room: usize| if room == 0 { 0 } else { at % room };
    match m {
        Mutation::Flip { at, bit } if n > 0 => input[pos(*at, n)] ^= 1 << bit,
        Mutation::Set { at, byte } if n > 0 => input[pos(*at, n)] = *byte,
        Mutation::Integer { at, width, value } if n >= *width => {
            let at = pos(*at, n - width + 1);
            input[at..at + width].copy_from_slice(&value.to_le_bytes()[..*width]);
        }
        Mutation::Insert { at, bytes } => {
            let at = pos(*at, n + 1);
            input.splice(at..at, bytes.iter().copied());
        }
        Mutation::Remove { at, len } if n > 0 => {
            let at = pos(*at, n);
            input.drain(at..(at + len).min(n));
        }
        Mutation::Truncate { at } => input.truncate(pos(*at, n + 1)),
        Mutation::Splice {
            seed,
            from,
            len,
            at,
        } if !seeds.is_empty() => {
            let other = &seeds[seed % seeds.len()];
            if !other.is_empty() {
                let from = from % other.len();
                let part = &other[from..(from + len).min(other.len())];
                let at = pos(*at, n + 1);
                input.splice(at..at, part.iter().copied());
            }
        }
        _ => {}
    }
}

/// Inputs built from `seeds` (at least one).
pub fn inputs(seeds: Arc<Vec<Vec<u8>>>) -> BoxedStrategy<Vec<u8>> {
    let n = seeds.len().max(1);
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        2 => (0..n).prop_map({
            let seeds = seeds.clone();
            move |i| seeds.get(i).cloned().unwrap_or_default()
        }),
        12 => (0..n, prop::collection::vec(mutation(), 1..6)).prop_map(move |(i, ms)| {
            let mut v = seeds.get(i).cloned().unwrap_or_default();
            for m in &ms {
                apply(&mut v, m, &seeds);
            }
            v
        }),
    ]
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds_on_any_input() {
        let seeds = vec![vec![], vec![1], vec![1, 2, 3, 4, 5, 6, 7, 8, 9]];
        let all = [
            Mutation::Flip {
                at: usize::MAX,
                bit: 7,
            },
            Mutation::Set { at: 5, byte: 9 },
            Mutation::Integer {
                at: usize::MAX,
                width: 8,
                value: u64::MAX,
            },
            Mutation::Insert {
                at: usize::MAX,
                bytes: vec![1, 2],
            },
            Mutation::Remove {
                at: usize::MAX,
                len: 31,
            },
            Mutation::Truncate { at: usize::MAX },
            Mutation::Splice {
                seed: usize::MAX,
                from: usize::MAX,
                len: 63,
                at: usize::MAX,
            },
        ];
        for seed in &seeds {
            for m in &all {
                let mut v = seed.clone();
                apply(&mut v, m, &seeds);
            }
        }
        let mut v = vec![0u8; 8];
        apply(
            &mut v,
            &Mutation::Integer {
                at: 0,
                width: 4,
                value: 0xffff_ffff,
            },
            &seeds,
        );
        assert_eq!(v, [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let mut v = vec![1u8, 2, 3];
        apply(&mut v, &Mutation::Remove { at: 1, len: 5 }, &seeds);
        assert_eq!(v, [1]);
    }
}
