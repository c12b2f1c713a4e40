//! Where the Ray executor finds its cluster, and how tasks ask it for room.

use std::path::PathBuf;
use std::time::Duration;

use crate::sandbox::SandboxConfig;

/// Where and how the Ray executor runs.
///
/// ```
/// use lattice::executor::RayOptions;
///
/// let options = RayOptions {
///     address: Some("127.0.0.1:6379".into()),
///     python: "/opt/venv/bin/python".into(),
///     ..RayOptions::default()
/// };
/// assert_eq!(options.dashboard_url().as_deref(), Some("http://127.0.0.1:8265"));
/// ```
#[derive(Clone, Debug)]
pub struct RayOptions {
    /// The cluster to connect to: its GCS address (`host:port`, as given to
    /// `ray start --address`), or its dashboard URL (`http://host:8265`, in
    /// which case the GCS is taken to be `host:6379`). None: start a head
    /// on this machine and stop it at shutdown.
    pub address: Option<String>,
    /// The dashboard URL (default: port 8265 on the address's host).
    pub dashboard: Option<String>,
    /// The Python that has `ray` installed; it runs the sidecar (and `ray
    /// start` for a head this executor starts). Default: `$LATTICE_RAY_PYTHON`
    /// if set, else `python3` on PATH.
    pub python: PathBuf,
    /// The path of the `lattice-wasm` binary **on the nodes**. Default: this
    /// process's own executable (right for a cluster on this machine or
    /// nodes with the same layout; not for test binaries, which are not the
    /// CLI).
    pub binary: Option<PathBuf>,
    /// The sandbox configuration of the tasks (default: the process-wide
    /// one at submit). A task's own fields win.
    pub sandbox: Option<SandboxConfig>,
    /// CPUs a task asks Ray for when it gives none. Whole CPUs by default:
    /// fractional requests let Ray pack more tasks per node but start a
    /// worker process per concurrent task, which was measured 17x slower
    /// (60 vs 1,043 tasks/s) on a 2-core machine.
    pub default_cpus: f64,
    /// Run the tasks that fit one CPU slot (no GPU, no memory request) on a
    /// warm worker per node, sent in chunks (default), rather than as one
    /// Ray task each, which starts a `lattice-wasm exec` process per task
    /// (~28 ms and ~73 tasks/s on the test cluster, against ~1,000+).
    pub warm_workers: bool,
    /// The GCS port of a head this executor starts (address None).
    pub head_port: u16,
    /// The dashboard port of a head this executor starts (address None).
    pub head_dashboard_port: u16,
    /// How long initialize waits for the sidecar to connect.
    pub connect_timeout: Duration,
}

impl Default for RayOptions {
    fn default() -> Self {
        RayOptions {
            address: None,
            dashboard: None,
            python: std::env::var_os("LATTICE_RAY_PYTHON")
                .filter(|p| !p.is_empty())
                .map_or_else(|| PathBuf::from("python3"), PathBuf::from),
            binary: None,
            sandbox: None,
            default_cpus: 1.0,
            warm_workers: true,
            head_port: 6379,
            head_dashboard_port: 8265,
            connect_timeout: Duration::from_secs(120),
        }
    }
}

impl RayOptions {
    /// The GCS address `ray.init` gets, if an address was given.
    pub fn gcs_address(&self) -> Option<String> {
        let address = self.address.as_deref()?.trim().trim_end_matches('/');
        match address.split_once("://") {
            Some(("http" | "https", rest)) => Some(format!("{}:6379", host_of(rest))),
            _ => Some(address.to_string()),
        }
    }

    /// The dashboard URL, if it can be known before a head is started.
    pub fn dashboard_url(&self) -> Option<String> {
        if let Some(url) = &self.dashboard {
            return Some(url.trim_end_matches('/').to_string());
        }
        let address = self.address.as_deref()?.trim().trim_end_matches('/');
        match address.split_once("://") {
            Some(("http" | "https", _)) => Some(address.to_string()),
            Some((_, rest)) => Some(format!("http://{}:8265", host_of(rest))),
            None => Some(format!("http://{}:8265", host_of(address))),
        }
    }
}

/// The host part of `host:port` (IPv6 in brackets kept whole).
fn host_of(address: &str) -> &str {
    let address = address.split('/').next().unwrap_or(address);
    if address.starts_with('[') {
        return address
            .split(']')
            .next()
            .map_or(address, |h| &address[..=h.len()]);
    }
    address.split(':').next().unwrap_or(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_give_the_gcs_and_the_dashboard() {
        let options = |address: &str| RayOptions {
            address: Some(address.into()),
            ..RayOptions::default()
        };
        let gcs = options("10.0.0.5:6379");
        assert_eq!(gcs.gcs_address().as_deref(), Some("10.0.0.5:6379"));
        assert_eq!(gcs.dashboard_url().as_deref(), Some("http://10.0.0.5:8265"));
        let dashboard = options("http://10.0.0.5:8265/");
        assert_eq!(dashboard.gcs_address().as_deref(), Some("10.0.0.5:6379"));
        assert_eq!(
            dashboard.dashboard_url().as_deref(),
            Some("http://10.0.0.5:8265")
        );
        assert_eq!(RayOptions::default().gcs_address(), None);
    }
}
