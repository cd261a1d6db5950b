//! The order queued tasks are served in: VIP tasks before normal ones (but never more
//! than `vip_share` in a row while normal tasks wait), users in turn within a class
//! (round-robin over users with queued work), and first in, first out within a user.

use std::collections::{HashMap, VecDeque};

use crate::domain::{Priority, QueuedTask, TaskId, UserId};

/// Who a lane belongs to: the user under fair order, everyone (0) otherwise.
type Owner = UserId;

pub struct FairQueue {
    fair: bool,
    vip_share: u32,
    lanes: HashMap<(Priority, Owner), VecDeque<QueuedTask>>,
    /// Owners with queued tasks, in the order they will be served, per class.
    vip_ring: VecDeque<Owner>,
    normal_ring: VecDeque<Owner>,
    /// VIP dispatches in a row while normal tasks waited.
    vip_streak: u32,
    len: usize,
}

impl FairQueue {
    pub fn new(fair: bool, vip_share: u32) -> FairQueue {
        FairQueue {
            fair,
            vip_share,
            lanes: HashMap::new(),
            vip_ring: VecDeque::new(),
            normal_ring: VecDeque::new(),
            vip_streak: 0,
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        *self = FairQueue::new(self.fair, self.vip_share);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn class(&self, task: &QueuedTask) -> Priority {
        // With no VIP share there is one class.
        if self.vip_share == 0 {
            Priority::Normal
        } else {
            task.priority
        }
    }

    fn owner(&self, user_id: UserId) -> Owner {
        if self.fair {
            user_id
        } else {
            UserId(0)
        }
    }

    fn ring(&mut self, class: Priority) -> &mut VecDeque<Owner> {
        match class {
            Priority::Vip => &mut self.vip_ring,
            Priority::Normal => &mut self.normal_ring,
        }
    }

    /// A new task: last of its user's tasks.
    pub fn push_back(&mut self, task: QueuedTask) {
        let key = (self.class(&task), self.owner(task.user_id));
        let lane = self.lanes.entry(key).or_default();
        let new_owner = lane.is_empty();
        lane.push_back(task);
        if new_owner {
            self.ring(key.0).push_back(key.1);
        }
        self.len += 1;
    }

    /// A task coming back for another attempt: first of its user's tasks, and its user
    /// first in line if it had nothing else queued.
    pub fn push_front(&mut self, task: QueuedTask) {
        let key = (self.class(&task), self.owner(task.user_id));
        let lane = self.lanes.entry(key).or_default();
        let new_owner = lane.is_empty();
        lane.push_front(task);
        if new_owner {
            self.ring(key.0).push_front(key.1);
        }
        self.len += 1;
    }

    /// The next task to run.
    pub fn pop(&mut self) -> Option<QueuedTask> {
        let vip_waiting = !self.vip_ring.is_empty();
        let normal_waiting = !self.normal_ring.is_empty();
        let class = match (vip_waiting, normal_waiting) {
            (true, true) if self.vip_streak < self.vip_share => {
                self.vip_streak += 1;
                Priority::Vip
            }
            (true, true) | (false, true) => {
                self.vip_streak = 0;
                Priority::Normal
            }
            (true, false) => {
                self.vip_streak = 0;
                Priority::Vip
            }
            (false, false) => return None,
        };
        let owner = self.ring(class).pop_front()?;
        let lane = self.lanes.get_mut(&(class, owner))?;
        let task = lane.pop_front();
        if lane.is_empty() {
            self.lanes.remove(&(class, owner));
        } else {
            self.ring(class).push_back(owner);
        }
        self.len -= 1;
        task
    }

    /// The ids of every queued task.
    pub fn ids(&self) -> std::collections::HashSet<&TaskId> {
        self.lanes
            .values()
            .flat_map(|lane| lane.iter().map(|t| &t.task_id))
            .collect()
    }

    /// Takes a queued task out (a cancel).
    pub fn remove(&mut self, task_id: &TaskId, user_id: UserId) -> Option<QueuedTask> {
        let owner = self.owner(user_id);
        for class in [Priority::Vip, Priority::Normal] {
            let Some(lane) = self.lanes.get_mut(&(class, owner)) else {
                continue;
            };
            let Some(index) = lane.iter().position(|t| t.task_id == *task_id) else {
                continue;
            };
            let task = lane.remove(index);
            if lane.is_empty() {
                self.lanes.remove(&(class, owner));
                self.ring(class).retain(|o| *o != owner);
            }
            self.len -= 1;
            return task;
        }
        None
    }

    /// The 1-based place the task will be served in, if it is queued. Exact within its
    /// class; across classes it assumes the VIP share as it stands.
    #[cfg(test)]
    pub fn position(&self, task_id: &TaskId, user_id: UserId) -> Option<usize> {
        self.positions(&[(task_id, user_id)])[0]
    }

    /// The places of many tasks at once (see `position`), in O((owners + asked) · log owners) rather
    /// than a walk of every lane per task (progress asks for thousands each second).
    ///
    /// A task at `index` in its owner's lane is served after `index` rounds; each round
    /// serves one task of every other owner with work left, and the owners before its
    /// owner in the ring get one round more. So the tasks of its class ahead of it are
    /// Σ min(len, index) over every lane (its own counts `index`), plus the owners before
    /// it whose lanes are longer than `index`.
    pub fn positions(&self, asked: &[(&TaskId, UserId)]) -> Vec<Option<usize>> {
        let mut found = vec![None; asked.len()];
        let share = self.vip_share as usize;
        let total = |class| -> usize {
            self.ring_of(class)
                .iter()
                .map(|o| self.lanes.get(&(class, *o)).map_or(0, VecDeque::len))
                .sum()
        };
        let (vips, normals) = (total(Priority::Vip), total(Priority::Normal));
        for class in [Priority::Vip, Priority::Normal] {
            let ring = self.ring_of(class);
            let lens: Vec<usize> = ring
                .iter()
                .map(|o| self.lanes.get(&(class, *o)).map_or(0, VecDeque::len))
                .collect();
            let place: HashMap<Owner, usize> =
                ring.iter().enumerate().map(|(i, o)| (*o, i)).collect();
            // (answer slot, owner's place in the ring, index in its lane)
            let mut queries: Vec<(usize, usize, usize)> = Vec::new();
            for (slot, (task_id, user_id)) in asked.iter().enumerate() {
                let owner = self.owner(*user_id);
                let Some(lane) = self.lanes.get(&(class, owner)) else {
                    continue;
                };
                if let Some(index) = lane.iter().position(|t| t.task_id == **task_id) {
                    queries.push((slot, place[&owner], index));
                }
            }
            if queries.is_empty() {
                continue;
            }
            let mut sorted = lens.clone();
            sorted.sort_unstable();
            let mut prefix = vec![0usize; sorted.len() + 1];
            for (i, len) in sorted.iter().enumerate() {
                prefix[i + 1] = prefix[i] + len;
            }
            let sum_min = |k: usize| {
                let shorter = sorted.partition_point(|&len| len < k);
                prefix[shorter] + (sorted.len() - shorter) * k
            };
            // Owners before a place with lanes longer than the index: the queries by
            // falling index, adding owners by falling length to a count over places.
            let mut by_len: Vec<usize> = (0..lens.len()).collect();
            by_len.sort_unstable_by(|a, b| lens[*b].cmp(&lens[*a]));
            queries.sort_unstable_by_key(|q| std::cmp::Reverse(q.2));
            let mut longer = Fenwick::new(lens.len());
            let mut added = 0;
            for (slot, at, index) in queries {
                while added < by_len.len() && lens[by_len[added]] > index {
                    longer.add(by_len[added]);
                    added += 1;
                }
                let ahead = sum_min(index) + longer.before(at);
                let interleaved = match class {
                    Priority::Vip if share > 0 => normals.min(ahead / share),
                    Priority::Normal => {
                        vips.min((share * (ahead + 1)).saturating_sub(self.vip_streak as usize))
                    }
                    Priority::Vip => 0,
                };
                found[slot] = Some(ahead + interleaved + 1);
            }
        }
        found
    }

    fn ring_of(&self, class: Priority) -> &VecDeque<Owner> {
        match class {
            Priority::Vip => &self.vip_ring,
            Priority::Normal => &self.normal_ring,
        }
    }
}

/// Counts of marked places, with the count before a place in O(log n).
struct Fenwick(Vec<usize>);

impl Fenwick {
    fn new(n: usize) -> Fenwick {
        Fenwick(vec![0; n + 1])
    }

    fn add(&mut self, place: usize) {
        let mut i = place + 1;
        while i < self.0.len() {
            self.0[i] += 1;
            i += i & i.wrapping_neg();
        }
    }

    /// Marked places before `place`.
    fn before(&self, place: usize) -> usize {
        let (mut i, mut count) = (place, 0);
        while i > 0 {
            count += self.0[i];
            i -= i & i.wrapping_neg();
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The place of one task by walking every lane, as `positions` must agree with.
    fn walked_position(queue: &FairQueue, task_id: &TaskId, user_id: UserId) -> Option<usize> {
        let owner = queue.owner(user_id);
        let (class, index) = [Priority::Vip, Priority::Normal]
            .into_iter()
            .find_map(|class| {
                let lane = queue.lanes.get(&(class, owner))?;
                Some((class, lane.iter().position(|t| t.task_id == *task_id)?))
            })?;
        let ring = match class {
            Priority::Vip => &queue.vip_ring,
            Priority::Normal => &queue.normal_ring,
        };
        // Users take one task per round; those before this user in the ring get one more
        // round than those after it.
        let mut ahead = index;
        let mut before = true;
        for other in ring {
            if *other == owner {
                before = false;
                continue;
            }
            let queued = queue.lanes.get(&(class, *other)).map_or(0, VecDeque::len);
            ahead += queued.min(index + usize::from(before));
        }
        let other_class = |class: Priority| -> usize {
            let ring = match class {
                Priority::Vip => &queue.vip_ring,
                Priority::Normal => &queue.normal_ring,
            };
            ring.iter()
                .map(|o| queue.lanes.get(&(class, *o)).map_or(0, VecDeque::len))
                .sum()
        };
        let share = queue.vip_share as usize;
        let interleaved = match class {
            Priority::Vip if share > 0 => other_class(Priority::Normal).min(ahead / share),
            Priority::Normal => other_class(Priority::Vip)
                .min((share * (ahead + 1)).saturating_sub(queue.vip_streak as usize)),
            Priority::Vip => 0,
        };
        Some(ahead + interleaved + 1)
    }

    #[test]
    fn positions_at_once_agree_with_a_walk_of_every_lane() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..200 {
            let (fair, share) = (round % 5 != 0, [0, 1, 4][round % 3]);
            let mut queue = FairQueue::new(fair, share);
            let mut ids = Vec::new();
            for i in 0..rng.gen_range(1..60) {
                let user = rng.gen_range(1..8);
                let priority = if rng.gen_bool(0.3) {
                    Priority::Vip
                } else {
                    Priority::Normal
                };
                let name = format!("t{i}");
                queue.push_back(task(&name, user, priority));
                ids.push((id(&name), UserId(user)));
            }
            // Serve a few, so the rings have turned and a VIP streak may stand.
            for _ in 0..rng.gen_range(0..5) {
                queue.pop();
            }
            ids.push((id("absent"), UserId(1)));
            let asked: Vec<(&TaskId, UserId)> = ids.iter().map(|(t, u)| (t, *u)).collect();
            let walked: Vec<Option<usize>> = ids
                .iter()
                .map(|(t, u)| walked_position(&queue, t, *u))
                .collect();
            assert_eq!(queue.positions(&asked), walked, "round {round}");
        }
    }

    use crate::domain::{ImageJob, NewTask};

    fn task(id: &str, user_id: i64, priority: Priority) -> QueuedTask {
        QueuedTask::fresh(NewTask {
            task_id: id.to_string().into(),
            user_id: UserId(user_id),
            priority,
            job: ImageJob {
                prompt: id.into(),
                negative_prompt: None,
                width: None,
                height: None,
                steps: 20,
                seed: None,
            },
            idempotency: None,
            trace: None,
            webhook: None,
        })
    }

    fn drain(queue: &mut FairQueue) -> Vec<String> {
        std::iter::from_fn(|| queue.pop())
            .map(|t| t.task_id.into_string())
            .collect()
    }

    fn id(task_id: &str) -> TaskId {
        task_id.to_string().into()
    }

    #[test]
    fn users_are_served_in_turn_and_each_in_order() {
        let mut queue = FairQueue::new(true, 4);
        for i in 0..3 {
            queue.push_back(task(&format!("a{i}"), 1, Priority::Normal));
        }
        queue.push_back(task("b0", 2, Priority::Normal));
        queue.push_back(task("c0", 3, Priority::Normal));
        assert_eq!(queue.position(&id("c0"), UserId(3)), Some(3));
        assert_eq!(queue.position(&id("a2"), UserId(1)), Some(5));
        assert_eq!(drain(&mut queue), ["a0", "b0", "c0", "a1", "a2"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn without_fair_order_it_is_first_come_first_served() {
        let mut queue = FairQueue::new(false, 4);
        for i in 0..3 {
            queue.push_back(task(&format!("a{i}"), 1, Priority::Normal));
        }
        queue.push_back(task("b0", 2, Priority::Normal));
        assert_eq!(queue.position(&id("b0"), UserId(2)), Some(4));
        assert_eq!(drain(&mut queue), ["a0", "a1", "a2", "b0"]);
    }

    #[test]
    fn vip_first_but_normal_tasks_age_in() {
        let mut queue = FairQueue::new(true, 2);
        queue.push_back(task("n0", 1, Priority::Normal));
        queue.push_back(task("n1", 1, Priority::Normal));
        for i in 0..5 {
            queue.push_back(task(&format!("v{i}"), 2, Priority::Vip));
        }
        assert_eq!(queue.position(&id("v0"), UserId(2)), Some(1));
        assert_eq!(queue.position(&id("n0"), UserId(1)), Some(3));
        assert_eq!(
            drain(&mut queue),
            ["v0", "v1", "n0", "v2", "v3", "n1", "v4"]
        );
    }

    #[test]
    fn a_zero_share_means_one_class() {
        let mut queue = FairQueue::new(true, 0);
        queue.push_back(task("n0", 1, Priority::Normal));
        queue.push_back(task("v0", 2, Priority::Vip));
        assert_eq!(drain(&mut queue), ["n0", "v0"]);
    }

    #[test]
    fn removed_and_retried_tasks_keep_the_order_sound() {
        let mut queue = FairQueue::new(true, 4);
        queue.push_back(task("a0", 1, Priority::Normal));
        queue.push_back(task("b0", 2, Priority::Normal));
        queue.push_back(task("b1", 2, Priority::Normal));
        assert_eq!(
            queue.remove(&id("a0"), UserId(1)).map(|t| t.task_id),
            Some(id("a0"))
        );
        assert_eq!(queue.remove(&id("a0"), UserId(1)).map(|t| t.task_id), None);
        queue.push_front(task("a1", 1, Priority::Normal));
        assert_eq!(queue.len(), 3);
        assert_eq!(drain(&mut queue), ["a1", "b0", "b1"]);
    }
}
