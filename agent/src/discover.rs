//! Discovery: what streams exist on this node, in the [`catalog`] the uplink announces.
//!
//! Two loops own one group of the catalog each:
//! * [`logs`] finds container logs under the pods directory (inotify hints and rescans), and
//!   keeps a vanished stream until its follower drained it;
//! * [`metrics`] finds metrics sources: static scrape targets, pods annotated for Prometheus,
//!   and each pod's resource usage (cgroup v2).
//!
//! With the kube pod watch, both add the task identity of each stream's pod ([`identity`]).
//! Discovery reads no log line and no metric: content is read only while a demand is open.

pub mod catalog;
pub mod identity;
pub mod logs;
pub mod metrics;

pub use catalog::{Catalog, Entry, Group, Source};
