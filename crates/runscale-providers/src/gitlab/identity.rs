//! Slot identity: the `system_id` each runner slot reports to GitLab, derived from the slot's
//! runner name and back, so a manager GitLab lists is matched to its instance with no memory.
//!
//! gitlab-runner keeps its `system_id` in `<config dir>/.runner_system_id` and uses it only if
//! it matches `^[sr]_[0-9a-zA-Z]{12}$` (otherwise it makes up its own). A runner name is
//! `rs-{pool}-{10 chars}` (one slot) or `rs-{pool}-{10 chars}-{slot}`, so a slot's id is
//! `s_` + the 10 characters + the slot on two digits (`00` for the single-slot name, `01` to
//! `99`); the pool is known from the runner the manager belongs to. A `system_id` that does not
//! decode is not a slot of ours (a runner that made up its own id, or somebody else's process).

use runscale_core::naming;

/// Most runner slots one instance can have (two decimal digits in the `system_id`).
pub(crate) const MAX_SLOTS: u32 = 99;

/// Characters of a runner name's random part.
const SUFFIX_LEN: usize = 10;

/// The `system_id` of the slot named `runner_name` of `pool`, or why it has none.
pub(crate) fn system_id(pool: &str, runner_name: &str) -> Result<String, String> {
    if !naming::owned_by(pool, runner_name) {
        return Err(format!(
            "{runner_name:?} is not a runscale runner name of pool {pool}"
        ));
    }
    let rest = runner_name
        .strip_prefix(naming::PREFIX)
        .and_then(|r| r.strip_prefix(pool))
        .and_then(|r| r.strip_prefix('-'))
        .unwrap_or_default();
    let (suffix, slot) = match rest.split_once('-') {
        None => (rest, 0),
        Some((suffix, slot)) => match slot.parse::<u32>() {
            Ok(n) if (1..=MAX_SLOTS).contains(&n) && !slot.starts_with('0') => (suffix, n),
            _ => {
                return Err(format!(
                    "runner {runner_name}: slot {slot} is not between 1 and {MAX_SLOTS} (a \
                     GitLab system_id holds two digits of slot)"
                ));
            }
        },
    };
    Ok(format!("s_{suffix}{slot:02}"))
}

/// The runner name of `pool` whose slot reports `system_id`, if it is one of ours.
pub(crate) fn runner_name(pool: &str, system_id: &str) -> Option<String> {
    let rest = system_id.strip_prefix("s_")?;
    if rest.len() != SUFFIX_LEN + 2 || !rest.is_ascii() {
        return None;
    }
    let (suffix, slot) = rest.split_at(SUFFIX_LEN);
    let slot: u32 = slot
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| slot.parse().ok())??;
    let name = if slot == 0 {
        format!("{}{pool}-{suffix}", naming::PREFIX)
    } else {
        format!("{}{pool}-{suffix}-{slot}", naming::PREFIX)
    };
    naming::owned_by(pool, &name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_ids_are_valid_for_gitlab_runner_and_decode_to_the_slot_name() {
        let valid = |id: &str| {
            id.len() == 14
                && (id.starts_with("s_") || id.starts_with("r_"))
                && id[2..].bytes().all(|b| b.is_ascii_alphanumeric())
        };
        for (pool, name, id) in [
            ("linux", "rs-linux-abcdefghij", "s_abcdefghij00"),
            ("linux", "rs-linux-abcdefghij-1", "s_abcdefghij01"),
            ("a-b", "rs-a-b-0123456789-42", "s_012345678942"),
            ("a-b", "rs-a-b-0123456789-99", "s_012345678999"),
        ] {
            let got = system_id(pool, name).expect("encodes");
            assert_eq!(got, id);
            assert!(valid(&got), "{got} is not a valid gitlab-runner system id");
            assert_eq!(runner_name(pool, &got).as_deref(), Some(name));
        }
        let mut rng = rand::rng();
        for slots in [1, 2, 99] {
            let (_, names) = naming::generate("p", slots, &mut rng);
            for n in names {
                let id = system_id("p", &n).expect("encodes");
                assert!(valid(&id));
                assert_eq!(runner_name("p", &id), Some(n));
            }
        }
    }

    #[test]
    fn slots_beyond_99_and_foreign_names_have_no_system_id() {
        let err = system_id("linux", "rs-linux-abcdefghij-100").expect_err("slot 100");
        assert!(err.contains("between 1 and 99"), "{err}");
        assert!(system_id("linux", "rs-linux-abcdefghij-0").is_err());
        assert!(system_id("linux", "rs-linux-abcdefghij-01").is_err());
        assert!(system_id("linux", "my-runner").is_err());
        assert!(system_id("other", "rs-linux-abcdefghij").is_err());
    }

    #[test]
    fn ids_gitlab_runner_made_up_are_not_slots() {
        for id in [
            "r_AbCdEfGhIj12", // random id of a runner without a valid file
            "s_abcdefghijkl", // no slot digits
            "s_ABCDEFGHIJ01", // upper case never appears in runner names
            "s_abcdefghij1",  // too short
            "rs-linux-abcdefghij",
            "",
        ] {
            assert_eq!(runner_name("linux", id), None, "{id}");
        }
    }
}
