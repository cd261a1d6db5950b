//! The balancing strategies, as pure functions over the instances of one kind that may
//! take work now (healthy, enabled, not draining). Each answers the index of the
//! candidate to lease, and only ever one with room.

use std::cmp::Ordering;

use crate::domain::{Strategy, UserId};

/// An instance as the strategies see it.
#[derive(Clone, Debug)]
pub(super) struct Candidate<'a> {
    /// Its URL: user-hash scores by it, so users keep their instance across restarts.
    pub key: &'a str,
    pub in_flight: u32,
    /// The capacity it may use now (less than configured during a slow start).
    pub capacity: u32,
    pub weight: u32,
    /// Moving average of successful calls; `None` until its first.
    pub latency_ms: Option<f64>,
}

impl Candidate<'_> {
    fn has_room(&self) -> bool {
        self.in_flight < self.capacity
    }
}

/// The candidate `strategy` picks for this user, if any has room. `cursor` is the
/// kind's round-robin position.
pub(super) fn choose(
    strategy: Strategy,
    candidates: &[Candidate],
    user_id: UserId,
    cursor: &mut usize,
) -> Option<usize> {
    match strategy {
        Strategy::RoundRobin => round_robin(candidates, cursor),
        Strategy::UserHash => user_hash(candidates, user_id.0),
        Strategy::LeastLoaded => least_loaded(candidates),
    }
}

/// Every candidate with room, in the order the strategy prefers them: the first is the
/// one `choose` picks (and only it moves the round-robin cursor). With several gateways
/// the registry tries them in this order for a free shared slot.
pub(super) fn order(
    strategy: Strategy,
    candidates: &[Candidate],
    user_id: UserId,
    cursor: &mut usize,
) -> Vec<usize> {
    let Some(first) = choose(strategy, candidates, user_id, cursor) else {
        return Vec::new();
    };
    let mut order = vec![first];
    let mut scratch = *cursor;
    let mut rest: Vec<usize> = (0..candidates.len()).filter(|&i| i != first).collect();
    while !rest.is_empty() {
        let subset: Vec<Candidate> = rest.iter().map(|&i| candidates[i].clone()).collect();
        let Some(next) = choose(strategy, &subset, user_id, &mut scratch) else {
            break;
        };
        order.push(rest.remove(next));
    }
    order
}

/// The next candidate with room after the last one picked.
fn round_robin(candidates: &[Candidate], cursor: &mut usize) -> Option<usize> {
    let n = candidates.len();
    let picked = (0..n)
        .map(|step| (*cursor + step) % n)
        .find(|&i| candidates[i].has_room())?;
    *cursor = (picked + 1) % n;
    Some(picked)
}

/// Lowest in-flight/capacity; among equals the heavier, then the faster. A full scan:
/// a kind has a handful of instances, so sampling two (power of two choices) would only
/// lose exactness.
fn least_loaded(candidates: &[Candidate]) -> Option<usize> {
    (0..candidates.len())
        .filter(|&i| candidates[i].has_room())
        .min_by(|&a, &b| lighter(&candidates[a], &candidates[b]))
}

fn lighter(a: &Candidate, b: &Candidate) -> Ordering {
    // a.in_flight / a.capacity against b's, in integers so equal loads tie exactly.
    let load_a = u64::from(a.in_flight) * u64::from(b.capacity);
    let load_b = u64::from(b.in_flight) * u64::from(a.capacity);
    load_a
        .cmp(&load_b)
        .then(b.weight.cmp(&a.weight))
        // An instance with no latency yet counts as fastest, so a new one gets tried.
        .then(
            a.latency_ms
                .unwrap_or(0.0)
                .total_cmp(&b.latency_ms.unwrap_or(0.0)),
        )
}

/// The user's own instance by weighted rendezvous hashing while it has room, else the
/// least-loaded one; the user returns home as soon as it has room again.
fn user_hash(candidates: &[Candidate], user_id: i64) -> Option<usize> {
    let home = (0..candidates.len()).max_by(|&a, &b| {
        let score = |c: &Candidate| rendezvous_score(user_id, c.key, c.weight);
        score(&candidates[a]).total_cmp(&score(&candidates[b]))
    })?;
    if candidates[home].has_room() {
        return Some(home);
    }
    least_loaded(candidates)
}

/// Weighted rendezvous score of (user, instance); the highest score wins, so adding an
/// instance moves only the users it wins (about 1/(n+1) of them).
fn rendezvous_score(user_id: i64, url: &str, weight: u32) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a, stable across builds and processes
    for byte in url.bytes().chain(user_id.to_le_bytes()) {
        hash = (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser spreads FNV's weak low bits over the whole word.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64; // in (0, 1)
    weight as f64 / -unit.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(key: &str, in_flight: u32, capacity: u32) -> Candidate<'_> {
        Candidate {
            key,
            in_flight,
            capacity,
            weight: 1,
            latency_ms: Some(50.0),
        }
    }

    #[test]
    fn an_order_starts_with_the_choice_and_holds_every_instance_with_room() {
        let candidates = [
            candidate("http://a", 1, 2),
            candidate("http://b", 0, 2),
            candidate("http://c", 2, 2),
        ];
        for strategy in [
            Strategy::LeastLoaded,
            Strategy::RoundRobin,
            Strategy::UserHash,
        ] {
            let (mut one, mut all) = (0, 0);
            let chosen = choose(strategy, &candidates, UserId(7), &mut one);
            let order = order(strategy, &candidates, UserId(7), &mut all);
            assert_eq!(order.first().copied(), chosen, "{strategy:?}");
            assert_eq!(one, all, "only the first pick moves the cursor");
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1], "{strategy:?}: the full one is left out");
        }
    }

    #[test]
    fn round_robin_rotates_and_skips_full_instances() {
        let mut all = vec![
            candidate("a", 0, 1),
            candidate("b", 0, 1),
            candidate("c", 0, 1),
        ];
        let mut cursor = 0;
        let picks: Vec<_> = (0..4)
            .map(|_| round_robin(&all, &mut cursor).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        all[1].in_flight = 1;
        assert_eq!(round_robin(&all, &mut cursor), Some(2));
        assert_eq!(round_robin(&all, &mut cursor), Some(0));
        all.iter_mut().for_each(|c| c.in_flight = 1);
        assert_eq!(round_robin(&all, &mut cursor), None);
        assert_eq!(round_robin(&[], &mut cursor), None);
    }

    #[test]
    fn least_loaded_picks_the_lowest_share_of_capacity() {
        // 2 of 4 is lighter than 1 of 1 and heavier than 1 of 3.
        let all = [
            candidate("a", 2, 4),
            candidate("b", 0, 1),
            candidate("c", 1, 3),
        ];
        let mut full = all.clone();
        full[1].in_flight = 1;
        assert_eq!(least_loaded(&all), Some(1));
        assert_eq!(least_loaded(&full), Some(2));
        full[2].in_flight = 3;
        full[0].in_flight = 4;
        assert_eq!(least_loaded(&full), None);
    }

    #[test]
    fn least_loaded_breaks_ties_by_weight_then_latency() {
        let mut all = [
            candidate("a", 1, 2),
            candidate("b", 1, 2),
            candidate("c", 2, 4),
        ];
        all[0].latency_ms = Some(80.0);
        all[1].latency_ms = Some(20.0);
        all[2].latency_ms = Some(40.0);
        assert_eq!(
            least_loaded(&all),
            Some(1),
            "equal load and weight: the faster"
        );
        all[2].weight = 2;
        assert_eq!(least_loaded(&all), Some(2), "equal load: the heavier");
        all[0].latency_ms = None;
        all[2].weight = 1;
        assert_eq!(least_loaded(&all), Some(0), "never measured: tried first");
    }

    #[test]
    fn user_hash_falls_back_while_home_is_full_and_returns() {
        let mut all = vec![
            candidate("a", 0, 1),
            candidate("b", 0, 1),
            candidate("c", 0, 1),
        ];
        let home = user_hash(&all, 7).unwrap();
        assert_eq!(user_hash(&all, 7), Some(home), "stable");
        all[home].in_flight = 1;
        let other = (0..3).find(|&i| i != home).unwrap();
        all[other].in_flight = 1;
        let spare = 3 - home - other;
        assert_eq!(
            user_hash(&all, 7),
            Some(spare),
            "least-loaded while home is full"
        );
        all[home].in_flight = 0;
        assert_eq!(user_hash(&all, 7), Some(home), "back home once it has room");
    }

    #[test]
    fn user_hash_moves_about_one_user_in_n_plus_one_when_an_instance_is_added() {
        let urls: Vec<String> = (0..5).map(|i| format!("http://10.0.0.{i}:8000")).collect();
        let candidates = |n: usize| -> Vec<Candidate> {
            urls[..n].iter().map(|url| candidate(url, 0, 1)).collect()
        };
        let (four, five) = (candidates(4), candidates(5));
        let users = 10_000;
        let moved: Vec<i64> = (0..users)
            .filter(|&u| user_hash(&four, u) != user_hash(&five, u))
            .collect();
        let fraction = moved.len() as f64 / users as f64;
        // Ideal is 1/5; modulo hashing would move about 4/5.
        assert!((0.15..0.25).contains(&fraction), "moved {fraction}");
        // Only to the new instance: no user is shuffled between the old ones.
        assert!(moved.iter().all(|&u| user_hash(&five, u) == Some(4)));
    }

    #[test]
    fn weight_gives_a_proportional_share_of_users() {
        let mut all = vec![candidate("http://a", 0, 1), candidate("http://b", 0, 1)];
        all[1].weight = 3;
        let on_b = (0..10_000)
            .filter(|&u| user_hash(&all, u) == Some(1))
            .count();
        assert!(
            (7_000..8_000).contains(&on_b),
            "{on_b} of 10000 on weight 3 of 4"
        );
    }
}
