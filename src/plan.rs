//! The pure meaning of a tree: start order, stop waves, effective deadlines and the
//! worst-case shutdown time. No I/O and no clocks: durations go in, durations come out, which
//! is what lets `check --plan` print exactly what the runtime will do and lets property tests
//! cover every shape of tree.

use std::time::Duration;

use crate::config::{join_path, GroupSpec, NodeKind, NodeSpec, StopOrder, TreeSpec};

/// Indexes of nodes in a dependency cycle, if there is one (first found, in YAML order),
/// given for each node the indexes of the siblings it depends on.
pub fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        mark: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = Mark::Active;
        stack.push(i);
        for &d in &deps[i] {
            match mark[d] {
                Mark::Active => {
                    let from = stack.iter().position(|&s| s == d).unwrap_or(0);
                    return Some(stack[from..].to_vec());
                }
                Mark::New => {
                    if let Some(c) = visit(d, deps, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark[i] = Mark::Done;
        None
    }
    let mut mark = vec![Mark::New; deps.len()];
    for i in 0..deps.len() {
        if mark[i] == Mark::New {
            if let Some(c) = visit(i, deps, &mut mark, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// For each node, the indexes of the siblings it depends on.
pub fn dependency_indexes(nodes: &[NodeSpec]) -> Vec<Vec<usize>> {
    nodes
        .iter()
        .map(|n| {
            n.depends_on
                .iter()
                .filter_map(|d| nodes.iter().position(|m| &m.name == d))
                .collect()
        })
        .collect()
}

/// Start order: YAML order, except that a node comes after everything it depends on.
/// The tree must be acyclic.
pub fn start_order(nodes: &[NodeSpec]) -> Vec<usize> {
    let deps = dependency_indexes(nodes);
    let mut placed = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    while order.len() < nodes.len() {
        let next = (0..nodes.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => break, // a cycle: validation rejects it before we get here
        }
    }
    order
}

/// Stop waves: each wave stops concurrently, waves one after another. With `reverse`, a node
/// stops in the wave after the last of its dependents, so dependents always stop before their
/// dependencies and unrelated nodes stop together (as systemd does). With `parallel`,
/// everything is one wave.
pub fn stop_waves(nodes: &[NodeSpec], order: StopOrder) -> Vec<Vec<usize>> {
    if nodes.is_empty() {
        return vec![];
    }
    if order == StopOrder::Parallel {
        return vec![(0..nodes.len()).collect()];
    }
    let deps = dependency_indexes(nodes);
    // height(n) = 0 when nothing depends on n, else 1 + the largest height of its dependents.
    let mut height = vec![0usize; nodes.len()];
    // Walking the start order backwards visits every dependent before its dependencies.
    for &i in start_order(nodes).iter().rev() {
        for &d in &deps[i] {
            height[d] = height[d].max(height[i] + 1);
        }
    }
    let waves = height.iter().copied().max().unwrap_or(0) + 1;
    (0..waves)
        .map(|w| (0..nodes.len()).filter(|&i| height[i] == w).collect())
        .filter(|w: &Vec<usize>| !w.is_empty())
        .collect()
}

/// The deadline a node gets at stop time: its own limit, never beyond what its level has left.
pub fn effective_deadline(own: Duration, remaining_of_level: Duration) -> Duration {
    own.min(remaining_of_level)
}

/// What `check --plan` prints and what the runtime follows, for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanNode {
    pub name: String,
    pub path: String,
    pub is_group: bool,
    pub replicas: u32,
    /// The node's own limit: `shutdown_timeout` of a group, `stop_timeout` of a worker.
    pub own_timeout: Duration,
    /// min(own, parent's effective deadline).
    pub effective: Duration,
    /// Time from the start of the whole shutdown until this node begins to stop, when every
    /// earlier wave uses its full deadline.
    pub starts_at: Duration,
    /// How long this node may take at worst, from the moment it begins to stop.
    pub worst: Duration,
    /// Stop waves of a group, as indexes into `children`.
    pub waves: Vec<Vec<usize>>,
    pub children: Vec<PlanNode>,
}

impl PlanNode {
    /// Worst-case time for the whole shutdown when this is the root.
    pub fn worst_total(&self) -> Duration {
        self.starts_at + self.worst
    }
}

/// The shutdown plan of a whole tree.
pub fn shutdown_plan(tree: &TreeSpec) -> PlanNode {
    let root = &tree.root;
    plan_group(
        "",
        "",
        root,
        root.shutdown_timeout,
        root.shutdown_timeout,
        Duration::ZERO,
    )
}

fn plan_group(
    name: &str,
    path: &str,
    group: &GroupSpec,
    parent_effective: Duration,
    budget: Duration,
    starts_at: Duration,
) -> PlanNode {
    let effective = effective_deadline(group.shutdown_timeout, parent_effective);
    let level = effective_deadline(group.shutdown_timeout, budget);
    let waves = stop_waves(&group.children, group.stop_order);
    let mut children: Vec<Option<PlanNode>> = vec![None; group.children.len()];
    let mut elapsed = Duration::ZERO;
    for wave in &waves {
        let remaining = level.saturating_sub(elapsed);
        let mut longest = Duration::ZERO;
        for &i in wave {
            let child = plan_node(
                &group.children[i],
                path,
                effective,
                remaining,
                starts_at + elapsed,
            );
            longest = longest.max(child.worst);
            children[i] = Some(child);
        }
        elapsed += longest;
    }
    PlanNode {
        name: name.to_string(),
        path: path.to_string(),
        is_group: true,
        replicas: 1,
        own_timeout: group.shutdown_timeout,
        effective,
        starts_at,
        worst: elapsed.min(level),
        waves,
        children: children.into_iter().flatten().collect(),
    }
}

fn plan_node(
    node: &NodeSpec,
    parent_path: &str,
    parent_effective: Duration,
    budget: Duration,
    starts_at: Duration,
) -> PlanNode {
    let path = join_path(parent_path, &node.name);
    match &node.kind {
        NodeKind::Group(g) => plan_group(&node.name, &path, g, parent_effective, budget, starts_at),
        NodeKind::Worker(w) => PlanNode {
            name: node.name.clone(),
            path,
            is_group: false,
            replicas: w.replicas,
            own_timeout: w.stop_timeout,
            effective: effective_deadline(w.stop_timeout, parent_effective),
            starts_at,
            worst: effective_deadline(w.stop_timeout, budget),
            waves: vec![],
            children: vec![],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Backoff, LogMode, Program, RestartPolicy, Strategy as RestartStrategy, WorkerSpec,
    };
    use proptest::prelude::*;

    fn worker(name: &str, deps: &[&str], stop: u64) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            kind: NodeKind::Worker(Box::new(WorkerSpec {
                program: Program::Command(vec!["true".into()]),
                env: vec![],
                cwd: None,
                user: None,
                group: None,
                replicas: 1,
                restart: RestartPolicy::OnFailure,
                backoff: Backoff::default(),
                stop_signal: nix::sys::signal::Signal::SIGTERM,
                stop_timeout: Duration::from_secs(stop),
                pre_stop: None,
                ready: None,
                watchdog: None,
                critical: false,
                logs: LogMode::Capture,
                limits: Default::default(),
            })),
        }
    }

    fn group(name: &str, deps: &[&str], timeout: u64, children: Vec<NodeSpec>) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            kind: NodeKind::Group(group_spec(timeout, children)),
        }
    }

    fn group_spec(timeout: u64, children: Vec<NodeSpec>) -> GroupSpec {
        GroupSpec {
            children,
            strategy: RestartStrategy::OneForOne,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(timeout),
            stop_order: StopOrder::Reverse,
            start_concurrency: None,
        }
    }

    fn tree(timeout: u64, children: Vec<NodeSpec>) -> TreeSpec {
        TreeSpec {
            source: "t.yaml".into(),
            control_socket: None,
            health_addr: None,
            guardian_grace: crate::config::schema::DEFAULT_GUARDIAN_GRACE,
            ownership: Default::default(),
            root: group_spec(timeout, children),
        }
    }

    #[test]
    fn dependents_stop_before_dependencies() {
        let nodes = vec![
            worker("db", &[], 10),
            worker("cache", &[], 10),
            worker("api", &["db", "cache"], 10),
            worker("web", &["api"], 10),
            worker("metrics", &[], 10),
        ];
        assert_eq!(
            stop_waves(&nodes, StopOrder::Reverse),
            vec![vec![3, 4], vec![2], vec![0, 1]]
        );
        assert_eq!(
            stop_waves(&nodes, StopOrder::Parallel),
            vec![vec![0, 1, 2, 3, 4]]
        );
    }

    #[test]
    fn start_order_respects_dependencies_and_yaml_order() {
        let nodes = vec![
            worker("web", &["api"], 1),
            worker("api", &[], 1),
            worker("x", &[], 1),
        ];
        assert_eq!(start_order(&nodes), vec![1, 0, 2]);
    }

    #[test]
    fn finds_cycles() {
        let nodes = vec![
            worker("a", &["c"], 1),
            worker("b", &["a"], 1),
            worker("c", &["b"], 1),
        ];
        assert_eq!(
            find_cycle(&dependency_indexes(&nodes)).map(|c| c.len()),
            Some(3)
        );
        let ok = vec![worker("a", &[], 1), worker("b", &["a"], 1)];
        assert_eq!(find_cycle(&dependency_indexes(&ok)), None);
    }

    #[test]
    fn deadline_is_min_of_own_and_parent_remaining() {
        assert_eq!(
            effective_deadline(Duration::from_secs(20), Duration::from_secs(15)),
            Duration::from_secs(15)
        );
        assert_eq!(
            effective_deadline(Duration::from_secs(5), Duration::from_secs(15)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn worst_case_adds_waves_and_is_capped_by_the_level() {
        // web (3s) stops first, then api (5s), then db (20s): 28s, capped by root's 25s.
        let t = tree(
            25,
            vec![
                worker("db", &[], 20),
                worker("api", &["db"], 5),
                worker("web", &["api"], 3),
            ],
        );
        let plan = shutdown_plan(&t);
        assert_eq!(plan.worst_total(), Duration::from_secs(25));
        let db = &plan.children[0];
        assert_eq!(db.effective, Duration::from_secs(20));
        assert_eq!(db.starts_at, Duration::from_secs(8));
        assert_eq!(db.worst, Duration::from_secs(17));
    }

    #[test]
    fn nested_group_is_bounded_by_its_own_timeout() {
        let t = tree(
            30,
            vec![
                group("backend", &[], 4, vec![worker("api", &[], 10)]),
                worker("db", &["backend"], 2),
            ],
        );
        let plan = shutdown_plan(&t);
        let backend = &plan.children[0];
        assert_eq!(backend.effective, Duration::from_secs(4));
        assert_eq!(backend.children[0].effective, Duration::from_secs(4));
        // db depends on backend, so db stops first (2s), then backend (4s).
        assert_eq!(plan.waves, vec![vec![1], vec![0]]);
        assert_eq!(backend.starts_at, Duration::from_secs(2));
        assert_eq!(plan.worst_total(), Duration::from_secs(6));
    }

    /// A random acyclic group: node i may only depend on nodes before it, so there is no
    /// cycle; names are shuffled into YAML order by `perm` so order is not a hint.
    fn arb_nodes(depth: u32) -> impl Strategy<Value = Vec<NodeSpec>> {
        let leaf = (1u64..30, proptest::collection::vec(any::<bool>(), 0..8));
        proptest::collection::vec((leaf, any::<bool>(), 1u64..40), 1..8)
            .prop_flat_map(move |specs| {
                let n = specs.len();
                let subgroups: Vec<_> = (0..n)
                    .map(|_| {
                        if depth > 0 {
                            arb_nodes(depth - 1).boxed()
                        } else {
                            Just(vec![]).boxed()
                        }
                    })
                    .collect();
                (Just(specs), subgroups)
            })
            .prop_map(|(specs, subs)| {
                specs
                    .into_iter()
                    .zip(subs)
                    .enumerate()
                    .map(|(i, (((stop, dep_bits), is_group, timeout), sub))| {
                        let deps: Vec<String> = (0..i)
                            .filter(|j| dep_bits.get(*j).copied().unwrap_or(false))
                            .map(|j| format!("n{j}"))
                            .collect();
                        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                        let name = format!("n{i}");
                        if is_group && !sub.is_empty() {
                            group(&name, &deps, timeout, sub)
                        } else {
                            worker(&name, &deps, stop)
                        }
                    })
                    .collect()
            })
    }

    fn check_plan(node: &PlanNode, spec: Option<&GroupSpec>) {
        for child in &node.children {
            assert!(
                child.effective <= node.effective,
                "{} exceeds {}",
                child.path,
                node.path
            );
            assert!(child.starts_at + child.worst <= node.starts_at + node.worst.max(child.worst));
        }
        if let Some(g) = spec {
            let wave_of = |i: usize| node.waves.iter().position(|w| w.contains(&i)).unwrap();
            for (i, n) in g.children.iter().enumerate() {
                for dep in &n.depends_on {
                    let d = g.children.iter().position(|m| &m.name == dep).unwrap();
                    assert!(
                        wave_of(i) < wave_of(d),
                        "{} must stop before {}",
                        n.name,
                        dep
                    );
                }
            }
            for (child, node) in node.children.iter().zip(&g.children) {
                if let NodeKind::Group(sub) = &node.kind {
                    check_plan(child, Some(sub));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn waves_put_dependents_first_and_deadlines_never_exceed_the_parent(
            nodes in arb_nodes(2), root_timeout in 1u64..60,
        ) {
            let t = tree(root_timeout, nodes);
            let plan = shutdown_plan(&t);
            prop_assert!(plan.worst_total() <= Duration::from_secs(root_timeout));
            check_plan(&plan, Some(&t.root));
            // Every child appears in exactly one wave.
            let mut seen: Vec<usize> = plan.waves.concat();
            seen.sort();
            prop_assert_eq!(seen, (0..t.root.children.len()).collect::<Vec<_>>());
        }
    }
}
