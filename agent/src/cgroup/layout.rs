//! Where kubelet puts pods and containers in the cgroup tree, and how their names read (pure).
//!
//! Two layouts, after kubelet's cgroup driver (`pkg/kubelet/cm/cgroup_manager_linux.go`):
//!
//! ```text
//! systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, - as _>.slice/cri-containerd-<id>.scope
//!           kubepods.slice/kubepods-pod<uid>.slice/crio-<id>.scope                (guaranteed QoS)
//! cgroupfs: kubepods/burstable/pod<uid>/<id>
//!           kubepods/pod<uid>/<id>                                                  (guaranteed QoS)
//! ```
//!
//! Container ids are 64 hex digits; `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//! (kubelet's log symlinks) names them.

use std::path::PathBuf;

/// The top-level kubepods cgroups of both drivers, relative to the cgroup root.
pub const KUBEPODS: [&str; 2] = ["kubepods.slice", "kubepods"];

/// The pod UID of a pod cgroup directory name, or `None` if it is not one.
pub fn pod_uid(name: &str) -> Option<String> {
    let uid = if let Some(slice) = name.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        let i = slice.rfind("-pod")?;
        slice[i + 4..].replace('_', "-")
    } else {
        name.strip_prefix("pod")?.to_owned()
    };
    let ok = uid.len() >= 8 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// True for a QoS-class cgroup that holds pods (`kubepods-burstable.slice`, `besteffort`, …).
pub fn is_qos_class(name: &str) -> bool {
    matches!(
        name,
        "kubepods-burstable.slice" | "kubepods-besteffort.slice" | "burstable" | "besteffort"
    )
}

/// The container id of a container cgroup directory name, or `None` if it is not one
/// (`crio-conmon-*` monitor scopes included).
pub fn container_id(name: &str) -> Option<&str> {
    let id = match name.strip_suffix(".scope") {
        Some(scope) => {
            if scope.starts_with("crio-conmon-") {
                return None;
            }
            &scope[scope.rfind('-')? + 1..]
        }
        None => name,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// A kubelet container log symlink name, `<pod>_<namespace>_<container>-<id>.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLogName<'a> {
    /// Pod name.
    pub pod: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Container name.
    pub container: &'a str,
    /// Container id (64 hex digits).
    pub id: &'a str,
}

/// Parses a `/var/log/containers` file name.
pub fn container_log_name(name: &str) -> Option<ContainerLogName<'_>> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.split('_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || pod.is_empty() || namespace.is_empty() || container.is_empty() {
        return None;
    }
    Some(ContainerLogName {
        pod,
        namespace,
        container,
        id,
    })
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (fields, after) = l.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        fields.split(' ').nth(4).map(PathBuf::from)
    })
}

/// This process's cgroup v2 path (relative to the mount), from `/proc/self/cgroup`.
pub fn own_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pod_cgroups_of_both_drivers() {
        assert_eq!(
            pod_uid("kubepods-burstable-pod8b2e5f3a_1c2d_4e5f_8a9b_0c1d2e3f4a5b.slice").as_deref(),
            Some("8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(
            pod_uid("kubepods-pod8b2e5f3a_1c2d_4e5f_8a9b_0c1d2e3f4a5b.slice").as_deref(),
            Some("8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(
            pod_uid("pod8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b").as_deref(),
            Some("8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
        );
        // Static pods have hash UIDs.
        assert_eq!(
            pod_uid("pod6f0e9c3b2a1d4e5f6a7b8c9d0e1f2a3b").as_deref(),
            Some("6f0e9c3b2a1d4e5f6a7b8c9d0e1f2a3b")
        );
        for not in [
            "kubepods-burstable.slice",
            "system.slice",
            "user-1000.slice",
            "podcast",
            "pod",
            "init.scope",
        ] {
            assert_eq!(pod_uid(not), None, "{not}");
        }
        assert!(is_qos_class("kubepods-besteffort.slice") && is_qos_class("burstable"));
        assert!(!is_qos_class("kubepods.slice"));
    }

    #[test]
    fn container_cgroups_of_each_runtime() {
        for name in [
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("docker-{ID}.scope"),
            ID.to_owned(),
        ] {
            assert_eq!(container_id(&name), Some(ID), "{name}");
        }
        assert_eq!(container_id(&format!("crio-conmon-{ID}.scope")), None);
        assert_eq!(container_id("cri-containerd-abc.scope"), None);
        assert_eq!(container_id("cgroup.procs"), None);
    }

    #[test]
    fn container_log_symlinks() {
        let name = format!("coredns-5d78c9869d-abcde_kube-system_core-dns-{ID}.log");
        assert_eq!(
            container_log_name(&name),
            Some(ContainerLogName {
                pod: "coredns-5d78c9869d-abcde",
                namespace: "kube-system",
                container: "core-dns",
                id: ID,
            })
        );
        assert_eq!(container_log_name("a_b_c-123.log"), None);
        assert_eq!(container_log_name(&format!("a_b-{ID}.log")), None);
    }

    #[test]
    fn mountinfo_and_own_cgroup() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("1 2 3:4 / / rw - ext4 /dev/sda rw\n"), None);
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/user.slice/session-1.scope\n"),
            Some("user.slice/session-1.scope")
        );
        assert_eq!(own_cgroup("0::/\n"), Some(""));
        assert_eq!(own_cgroup("1:cpu:/\n"), None);
    }
}
