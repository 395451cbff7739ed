//! Runner names: how a runner, its instance and its pool find each other.
//!
//! An instance gets a random base name `rs-{pool}-{10 chars}`; its runners are named after it:
//! the base name itself with one slot, `{base}-{slot}` (slots from 1) with several. A provider
//! uses [`owned_by`] to tell this pool's runners from anybody else's.

use rand::Rng;

/// Prefix of every runner name runscale makes.
pub const PREFIX: &str = "rs-";
const SUFFIX_LEN: usize = 10;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh base name for an instance of `pool`, and the runner names of its `slots`.
pub fn generate(pool: &str, slots: u32, rng: &mut impl Rng) -> (String, Vec<String>) {
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let base = format!("{PREFIX}{pool}-{suffix}");
    let names = if slots <= 1 {
        vec![base.clone()]
    } else {
        (1..=slots).map(|i| format!("{base}-{i}")).collect()
    };
    (base, names)
}

/// Whether `name` is a runner name runscale made for `pool`.
pub fn owned_by(pool: &str, name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix(pool))
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let (suffix, slot) = match rest.split_once('-') {
        Some((s, slot)) => (s, Some(slot)),
        None => (rest, None),
    };
    let suffix_ok = suffix.len() == SUFFIX_LEN && suffix.bytes().all(|b| ALPHABET.contains(&b));
    let slot_ok = slot.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    suffix_ok && slot_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_owned_by_their_pool_only() {
        let mut rng = rand::rng();
        for pool in ["a", "a-b", "linux-x64"] {
            for slots in [1, 3] {
                let (_, names) = generate(pool, slots, &mut rng);
                assert_eq!(names.len(), slots as usize);
                for n in &names {
                    assert!(owned_by(pool, n), "{n} should be owned by {pool}");
                }
            }
        }
        let (_, names) = generate("a-b", 1, &mut rng);
        assert!(
            !owned_by("a", &names[0]),
            "{} must not be owned by pool a",
            names[0]
        );
        assert!(!owned_by("a", "my-hand-made-runner"));
        assert!(!owned_by("a", "rs-a-short"));
    }
}
