//! cgroup reading on a recorded kubepods tree (both kubelet cgroup drivers) written into a
//! temporary directory, and on this machine's real cgroup tree, whatever its layout.

use std::path::Path;
use std::time::Duration;

use logrelay_agent::cgroup::{self, layout};
use logrelay_wire::labels::StreamKind;

const UID_A: &str = "8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const UID_B: &str = "11111111-2222-3333-4444-555555555555";
const UID_C: &str = "6f0e9c3b2a1d4e5f6a7b8c9d0e1f2a3b";
const MAIN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SIDE: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const PAUSE: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

/// A cgroup's interface files as the kernel writes them (values from a real node, trimmed).
fn usage_files(
    usage_usec: u64,
    current: u64,
    inactive: u64,
    cpu_max: &str,
    mem_max: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "cpu.stat",
            format!(
                "usage_usec {usage_usec}\nuser_usec {}\nsystem_usec {}\ncore_sched.force_idle_usec 0\n\
                 nr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
                usage_usec * 3 / 4,
                usage_usec / 4
            ),
        ),
        ("memory.current", format!("{current}\n")),
        (
            "memory.stat",
            format!(
                "anon 21430272\nfile 9097216\nkernel 1376256\nkernel_stack 98304\npagetables 151552\n\
                 sec_pagetables 0\npercpu 0\nsock 0\nvmalloc 0\nshmem 0\nfile_mapped 5005312\n\
                 file_dirty 0\nfile_writeback 0\nswapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\n\
                 inactive_anon 21397504\nactive_anon 32768\ninactive_file {inactive}\nactive_file 3461120\n\
                 unevictable 0\nslab_reclaimable 711512\nslab_unreclaimable 244088\n"
            ),
        ),
        ("cpu.max", format!("{cpu_max}\n")),
        ("memory.max", format!("{mem_max}\n")),
        ("cgroup.procs", String::new()),
    ]
}

fn write_usage(dir: &Path, files: &[(&'static str, String)]) {
    let f: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    write(dir, &f);
}

/// A node with three pods: two under the systemd driver's tree (burstable, guaranteed) and
/// one under the cgroupfs driver's (besteffort), plus system cgroups that are not pods.
struct Node {
    cgroups: tempfile::TempDir,
    pods: tempfile::TempDir,
    containers: tempfile::TempDir,
}

impl Node {
    fn record() -> Self {
        let node = Self {
            cgroups: tempfile::tempdir().unwrap(),
            pods: tempfile::tempdir().unwrap(),
            containers: tempfile::tempdir().unwrap(),
        };
        let root = node.cgroups.path();
        write(
            root,
            &[(
                "cgroup.controllers",
                "cpuset cpu io memory hugetlb pids rdma misc\n",
            )],
        );
        write_usage(
            &root.join("system.slice/containerd.service"),
            &usage_files(1, 1, 0, "max 100000", "max"),
        );
        let a = node.pod_a_dir();
        write_usage(
            &a,
            &usage_files(5_000_000, 120_000_000, 20_000_000, "max 100000", "max"),
        );
        write_usage(
            &a.join(format!("cri-containerd-{MAIN}.scope")),
            &usage_files(
                4_000_000,
                100_000_000,
                15_000_000,
                "50000 100000",
                "268435456",
            ),
        );
        write_usage(
            &a.join(format!("cri-containerd-{SIDE}.scope")),
            &usage_files(900_000, 15_000_000, 5_000_000, "max 100000", "max"),
        );
        write_usage(
            &a.join(format!("cri-containerd-{PAUSE}.scope")),
            &usage_files(100_000, 500_000, 0, "max 100000", "max"),
        );
        write_usage(
            &root.join(format!(
                "kubepods.slice/kubepods-pod{}.slice",
                UID_B.replace('-', "_")
            )),
            &usage_files(7, 8, 0, "200000 100000", "1073741824"),
        );
        write_usage(
            &root.join(format!("kubepods/besteffort/pod{UID_C}/{MAIN}")),
            &usage_files(1, 2, 0, "max 100000", "max"),
        );
        write_usage(
            &root.join(format!("kubepods/besteffort/pod{UID_C}")),
            &usage_files(1, 2, 0, "max 100000", "max"),
        );
        // Log directories name pods A and B; kubelet's symlinks name A's containers.
        std::fs::create_dir(node.pods.path().join(format!("team_task-a_{UID_A}"))).unwrap();
        std::fs::create_dir(
            node.pods
                .path()
                .join(format!("kube-system_coredns-x_{UID_B}")),
        )
        .unwrap();
        for (c, id) in [("main", MAIN), ("sidecar", SIDE)] {
            std::fs::write(
                node.containers
                    .path()
                    .join(format!("task-a_team_{c}-{id}.log")),
                "",
            )
            .unwrap();
        }
        node
    }

    fn pod_a_dir(&self) -> std::path::PathBuf {
        self.cgroups.path().join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            UID_A.replace('-', "_")
        ))
    }
}

#[test]
fn pods_of_both_drivers_are_found_and_labelled_like_their_logs() {
    let node = Node::record();
    let found = cgroup::find_pods(node.cgroups.path());
    let uids: Vec<&str> = found.iter().map(|p| p.uid.as_str()).collect();
    assert_eq!(uids, [UID_B, UID_C, UID_A]);
    assert_eq!(found[2].dir, node.pod_a_dir());

    let resources = cgroup::ResourcesConfig {
        cgroup_root: node.cgroups.path().to_owned(),
        containers_dir: node.containers.path().to_owned(),
        interval: Duration::from_secs(5),
    };
    let streams = cgroup::scan(&resources, node.pods.path(), "node-1");
    let labels: Vec<_> = streams
        .iter()
        .map(|(l, _)| (l.namespace.as_str(), l.pod.as_str(), l.pod_uid.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("kube-system", "coredns-x", UID_B),
            ("", "", UID_C),
            ("team", "task-a", UID_A)
        ]
    );
    for (l, _) in &streams {
        assert_eq!(
            (l.kind, l.container.as_str(), l.node.as_str()),
            (StreamKind::Metrics, "resources", "node-1")
        );
    }
}

#[test]
fn a_pod_sample_reads_every_container_with_its_name() {
    let node = Node::record();
    let s = cgroup::sample_pod(&node.pod_a_dir(), node.containers.path());
    assert_eq!(s.pod.cpu.unwrap().usage_usec, 5_000_000);
    assert_eq!(s.pod.working_set(), Some(100_000_000));
    assert_eq!(s.pod.memory_max, Some(None));
    let containers: Vec<_> = s
        .containers
        .iter()
        .map(|c| (c.label.0, c.label.1.as_str()))
        .collect();
    assert_eq!(
        containers,
        [
            ("container", "main"),
            ("container", "sidecar"),
            ("container_id", "cccccccccccc")
        ],
        "the sandbox has no log symlink: it is named by id"
    );
    let main = &s.containers[0].usage;
    assert_eq!(main.working_set(), Some(85_000_000));
    assert_eq!(main.cpu_max.unwrap().cores(), Some(0.5));
    assert_eq!(main.memory_max, Some(Some(268_435_456)));
}

#[test]
fn missing_controllers_leave_fields_empty() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[("cpu.stat", "usage_usec 10\n")]);
    let u = cgroup::read_usage(dir.path());
    assert_eq!(u.cpu.unwrap().usage_usec, 10);
    assert_eq!(
        (u.memory_current, u.cpu_max, u.memory_max, u.working_set()),
        (None, None, None, None)
    );
    assert_eq!(
        cgroup::read_usage(&dir.path().join("gone")),
        cgroup::Usage::default()
    );
    assert!(cgroup::find_pods(&dir.path().join("gone")).is_empty());
}

/// This machine's cgroup v2 tree, wherever it is mounted (a hybrid host mounts it at
/// `/sys/fs/cgroup/unified`), is read without a kubepods layout.
#[test]
fn this_machines_cgroup_tree() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(mount) = layout::cgroup2_mount(&mountinfo) else {
        eprintln!("no cgroup2 hierarchy mounted here: nothing to read");
        return;
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = layout::own_cgroup(&own).unwrap_or("");
    // Our own cgroup, or the nearest ancestor that has cpu.stat (the root always does).
    let mut dir = mount.join(own);
    while !dir.join("cpu.stat").exists() && dir != mount {
        dir.pop();
    }
    let before = cgroup::read_usage(&dir);
    let Some(cpu) = before.cpu else {
        panic!("{} has no readable cpu.stat", dir.display());
    };
    assert!(cpu.usage_usec > 0, "{}: cpu usage {cpu:?}", dir.display());
    if let Some(current) = before.memory_current {
        assert!(current > 0);
        assert!(before.working_set().unwrap() <= current);
    }
    // Burn CPU until the counter moves (it is cumulative, so it must).
    let mut x = 0u64;
    let moved = (0..200).any(|i| {
        for j in 0..200_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(j ^ i);
        }
        cgroup::read_usage(&dir).cpu.unwrap().usage_usec > cpu.usage_usec
    });
    assert!(moved, "cpu usage of {} never grew ({x})", dir.display());
    // The pod scan tolerates a tree with no kubepods in it.
    let pods = cgroup::find_pods(&mount);
    eprintln!(
        "{}: {} pod cgroups; usage {:?}",
        mount.display(),
        pods.len(),
        before
    );
}
