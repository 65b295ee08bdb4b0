//! Resources → `Node` status: what this machine has (capacity), how busy it is (usage), and the
//! pure decisions built on those figures: the load score, `overloaded`, and whether a new status
//! differs enough from the last one written to be worth a write.
//!
//! Guarantees:
//!
//! * **Runs without NVIDIA.** NVML (`libnvidia-ml.so.1`) is loaded at run time by
//!   nvml-wrapper, never linked: on a machine without the library or the driver,
//!   [`ResourceProbe::new`] logs one info line (`no NVIDIA GPUs: …`) and reports no NVML GPUs.
//! * **Declared GPUs** (`--gpus MODELxN`, the config, `Node.spec.gpus`) are reported after the
//!   NVML ones, with indices that follow NVML's device count, so the two never collide. They
//!   carry the declared model and memory and no uuid; nothing measures their usage.
//! * **Cheap to call every tick.** A probe refreshes only CPU times, `/proc/meminfo`, one
//!   `statvfs` and the NVML queries; no process table. The disk list is rebuilt only when the
//!   probed path changes or once a minute (to notice new mounts).
//! * **Pure decisions.** [`load_score`], [`overloaded`], [`status_changed_meaningfully`] and
//!   [`should_write`] do no I/O and are unit-tested on their edges.
//!
//! Caveats:
//!
//! * [`ResourceProbe::probe`] blocks (file reads and NVML calls; NVML can take long on a GPU that
//!   is failing): call it from `tokio::task::spawn_blocking` or a dedicated thread.
//! * CPU usage is the machine-wide average since the previous probe (or since
//!   [`ResourceProbe::new`]), read from `/proc/stat`; inside a container with a CPU quota it is
//!   the host's figure, while the CPU count honours the quota.
//! * Inside a memory-limited cgroup (a container) the memory capacity is the limit and the used
//!   figure is the cgroup's anonymous memory (page cache excluded, as the host figure excludes
//!   reclaimable memory through `MemAvailable`); shared memory (`/dev/shm`) is not counted there.
//! * The disk is the filesystem sysinfo lists whose mount point is the longest prefix of the
//!   probed path; filesystems sysinfo skips (tmpfs, NFS/CIFS) fall back to the enclosing mount.
//!   Disk usage is `(total − available) / total`: blocks reserved for root count as used, so the
//!   figure reaches 100 % exactly when unprivileged writes start failing, and reads higher than
//!   `df` by the reserve (typically 5 % on ext4).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Deserialize;
use sysinfo::{
    CpuRefreshKind, Disk, DiskRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System,
};

use crate::api::meta::Condition;
use crate::api::node::{Capacity, Gpu, GpuDeclaration, GpuUsage, NodeStatus, Usage};

/// The syntax of a GPU declaration, for messages and `--help`.
pub const GPU_DECLARATION_SYNTAX: &str =
    "MODEL[xCOUNT][:MEMORY_GB], e.g. H100x8, \"RTX 4090x2\", GH200, A100x4:80";

/// The most GPUs one declaration may name (a typo guard; no real machine comes close).
pub const MAX_DECLARED_GPUS: u32 = 1024;

/// A usage figure must move by at least this many percentage points to be worth a write.
pub const USAGE_CHANGE_POINTS: f64 = 5.0;

/// A status is written at least this often even when nothing changed meaningfully.
pub const MAX_STATUS_AGE: Duration = Duration::from_secs(30);

/// How often the list of mounted filesystems is rebuilt.
const DISK_RELIST_INTERVAL: Duration = Duration::from_secs(60);

/// Weights of the load score; they sum to 1.
const CPU_WEIGHT: f64 = 0.3;
const MEMORY_WEIGHT: f64 = 0.3;
const GPU_MEMORY_WEIGHT: f64 = 0.3;
const DISK_WEIGHT: f64 = 0.1;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    /// A `--gpus` value (or config entry) that does not follow [`GPU_DECLARATION_SYNTAX`].
    #[error("GPU declaration {input:?}: {problem} (expected {GPU_DECLARATION_SYNTAX})")]
    BadGpuDeclaration { input: String, problem: String },
    /// The operating system would not give sysinfo what it needs.
    #[error("cannot read {what}: {source}")]
    System {
        what: &'static str,
        source: sysinfo::Error,
    },
}

/// Parses a GPU declaration: `MODEL[xCOUNT][:MEMORY_GB]`.
///
/// * `COUNT` follows the **last lowercase `x`**, directly (no spaces), as a whole number
///   from 1 to [`MAX_DECLARED_GPUS`]; without it the count is 1 (`GH200`).
/// * `MEMORY_GB` follows the last `:` as a positive number of GiB per GPU (`A100x4:80`,
///   `M3 Max:36`); without it the memory is unknown (0 bytes in capacity).
/// * `MODEL` is the rest, trimmed, and may contain spaces (`RTX 4090x2`). An uppercase `X` is
///   part of the model (`MI300X`, `R9 295X2`); an `x` that is not followed by digits is too
///   (`Apple M3 Max`, `rtx 4090`) — unless it follows a digit (`H100x`, `H100xfoo`,
///   `H100x 8`), which is taken for a mistyped count and refused.
pub fn parse_gpu_declaration(s: &str) -> Result<GpuDeclaration, ResourcesError> {
    let bad = |problem: String| ResourcesError::BadGpuDeclaration {
        input: s.to_string(),
        problem,
    };
    let input = s.trim();
    if input.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let (spec, memory_gb) = match input.rsplit_once(':') {
        Some((spec, memory)) => {
            let memory = memory.trim();
            if memory.is_empty() {
                return Err(bad("the memory after ':' is missing".into()));
            }
            let gb: f64 = memory
                .parse()
                .map_err(|_| bad(format!("memory {memory:?} is not a number of GB")))?;
            if !gb.is_finite() || gb <= 0.0 {
                return Err(bad(format!(
                    "memory {memory:?} must be a positive number of GB"
                )));
            }
            (spec, Some(gb))
        }
        None => (input, None),
    };
    let (model, count) = split_count(spec).map_err(bad)?;
    if model.is_empty() {
        return Err(bad("the model is missing".into()));
    }
    Ok(GpuDeclaration {
        model: model.to_string(),
        count,
        memory_gb,
    })
}

/// `MODELxCOUNT` → (model, count); see [`parse_gpu_declaration`].
fn split_count(spec: &str) -> Result<(&str, u32), String> {
    let Some((head, tail)) = spec.rsplit_once('x') else {
        return Ok((spec.trim(), 1));
    };
    if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
        let count: u32 = tail
            .parse()
            .ok()
            .filter(|n| *n <= MAX_DECLARED_GPUS)
            .ok_or_else(|| format!("count {tail} is more than {MAX_DECLARED_GPUS}"))?;
        if count == 0 {
            return Err("the count must be at least 1".into());
        }
        return Ok((head.trim(), count));
    }
    if head.ends_with(|c: char| c.is_ascii_digit()) {
        return Err(if tail.is_empty() {
            "the count after 'x' is missing".into()
        } else {
            format!("count {tail:?} after 'x' is not a whole number")
        });
    }
    Ok((spec.trim(), 1))
}

/// Usage above which a node is `overloaded`, in percent. A figure exactly at its threshold is
/// not overloaded ("above" means strictly above). GPU utilisation has no threshold: a busy GPU
/// is the point of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Thresholds {
    pub cpu: f64,
    pub memory: f64,
    pub gpu_memory: f64,
    pub disk: f64,
}

impl Default for Thresholds {
    /// cpu 90, memory 90, gpu-memory 95, disk 95.
    fn default() -> Self {
        Self {
            cpu: 90.0,
            memory: 90.0,
            gpu_memory: 95.0,
            disk: 95.0,
        }
    }
}

/// The weighted load in [0, 1]; lower is less busy:
///
/// `0.3·cpu + 0.3·memory + 0.3·gpu_memory + 0.1·disk`, each figure as a fraction of 100 %
/// clamped to [0, 1] (NaN counts as 0). GPU utilisation is left out (it swings from one sample
/// to the next); a node without GPUs has gpu_memory 0, so it scores lower than a GPU node
/// equally busy otherwise — which steers CPU work away from GPU nodes.
pub fn load_score(usage: &Usage) -> f64 {
    let fraction = |percent: f64| {
        if percent.is_nan() {
            0.0
        } else {
            (percent / 100.0).clamp(0.0, 1.0)
        }
    };
    let score = CPU_WEIGHT * fraction(usage.cpu_percent)
        + MEMORY_WEIGHT * fraction(usage.memory_percent)
        + GPU_MEMORY_WEIGHT * fraction(usage.gpu_memory_percent)
        + DISK_WEIGHT * fraction(usage.disk_percent);
    score.clamp(0.0, 1.0)
}

/// True when any of cpu, memory, gpu-memory or disk usage is strictly above its threshold
/// (exactly at the threshold is not overloaded; NaN is never above).
pub fn overloaded(usage: &Usage, thresholds: &Thresholds) -> bool {
    usage.cpu_percent > thresholds.cpu
        || usage.memory_percent > thresholds.memory
        || usage.gpu_memory_percent > thresholds.gpu_memory
        || usage.disk_percent > thresholds.disk
}

/// True when `new` is worth writing over `old`: capacity changed, `overloaded` flipped, the
/// conditions changed (type, status, reason or message — a new `lastTransitionTime` alone does
/// not count), the set of running jobs changed (order does not count), the agent version or
/// endpoint changed, or any usage figure moved by at least [`USAGE_CHANGE_POINTS`]. The load
/// score and the heartbeat time are ignored: the score follows usage, and the heartbeat is
/// what the periodic write ([`MAX_STATUS_AGE`]) is for.
pub fn status_changed_meaningfully(old: &NodeStatus, new: &NodeStatus) -> bool {
    old.capacity != new.capacity
        || old.overloaded != new.overloaded
        || condition_keys(&old.conditions) != condition_keys(&new.conditions)
        || sorted(&old.running_jobs) != sorted(&new.running_jobs)
        || old.agent_version != new.agent_version
        || old.endpoint != new.endpoint
        || usage_moved(&old.usage, &new.usage)
}

/// The write rule in one call: write when nothing was written yet, when [`MAX_STATUS_AGE`] has
/// passed since the last write, or when the status changed meaningfully.
pub fn should_write(
    last: Option<&NodeStatus>,
    since_last_write: Duration,
    new: &NodeStatus,
) -> bool {
    match last {
        None => true,
        Some(old) => since_last_write >= MAX_STATUS_AGE || status_changed_meaningfully(old, new),
    }
}

fn condition_keys(conditions: &[Condition]) -> Vec<(&str, String, &str, &str)> {
    let mut keys: Vec<_> = conditions
        .iter()
        .map(|c| {
            (
                c.type_.as_str(),
                format!("{:?}", c.status),
                c.reason.as_str(),
                c.message.as_str(),
            )
        })
        .collect();
    keys.sort();
    keys
}

fn sorted(jobs: &[String]) -> Vec<&str> {
    let mut jobs: Vec<&str> = jobs.iter().map(String::as_str).collect();
    jobs.sort_unstable();
    jobs
}

fn usage_moved(old: &Usage, new: &Usage) -> bool {
    let per_gpu = |u: &Usage| -> Vec<(u32, f64, f64)> {
        u.gpus
            .iter()
            .map(|g| {
                (
                    g.index,
                    g.util_percent.unwrap_or(f64::NAN),
                    g.memory_percent,
                )
            })
            .collect()
    };
    let (old_gpus, new_gpus) = (per_gpu(old), per_gpu(new));
    if old_gpus.len() != new_gpus.len() || old_gpus.iter().zip(&new_gpus).any(|(a, b)| a.0 != b.0) {
        return true;
    }
    let gpu_figures = old_gpus
        .iter()
        .zip(&new_gpus)
        .flat_map(|(a, b)| [(a.1, b.1), (a.2, b.2)]);
    [
        (old.cpu_percent, new.cpu_percent),
        (old.memory_percent, new.memory_percent),
        (old.disk_percent, new.disk_percent),
        (old.gpu_memory_percent, new.gpu_memory_percent),
        (old.gpu_util_percent, new.gpu_util_percent),
    ]
    .into_iter()
    .chain(gpu_figures)
    .any(|(a, b)| a.is_nan() != b.is_nan() || (a - b).abs() >= USAGE_CHANGE_POINTS)
}

/// One probe's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub capacity: Capacity,
    pub usage: Usage,
    /// 1-, 5- and 15-minute load averages, where the platform has them.
    pub load_average: Option<[f64; 3]>,
}

impl Observed {
    /// Writes capacity, usage, load score and `overloaded` into `status`; leaves the rest.
    pub fn apply(&self, status: &mut NodeStatus, thresholds: &Thresholds) {
        status.capacity = self.capacity.clone();
        status.usage = self.usage.clone();
        status.load_score = load_score(&self.usage);
        status.overloaded = overloaded(&self.usage, thresholds);
    }
}

/// Reads this machine's resources; keep one for the agent's lifetime (it holds the previous
/// CPU sample, the disk list and the NVML handle).
pub struct ResourceProbe {
    system: System,
    disks: Disks,
    disks_listed_at: Instant,
    /// The path probed last and the index in `disks` of the filesystem holding it.
    disk_for: Option<(PathBuf, usize)>,
    cpus: u32,
    nvml: Option<Nvml>,
    /// NVML failures already logged, by GPU index (`None`: the device count).
    gpu_faults: BTreeMap<Option<u32>, String>,
    disk_missing_logged: bool,
}

impl ResourceProbe {
    /// Reads the CPU list and the mounted filesystems, and loads NVML once: when it cannot be
    /// loaded (no library, no driver, no permission) logs one info line and goes on without.
    pub fn new() -> Result<Self, ResourcesError> {
        let nvml = match Nvml::init() {
            Ok(nvml) => {
                match nvml.device_count() {
                    Ok(n) => tracing::info!(gpus = n, "NVML loaded"),
                    Err(e) => tracing::warn!("NVML loaded but cannot count GPUs: {e}"),
                }
                Some(nvml)
            }
            Err(e) => {
                tracing::info!("no NVIDIA GPUs: {e}");
                None
            }
        };
        Self::with_nvml(nvml)
    }

    fn with_nvml(nvml: Option<Nvml>) -> Result<Self, ResourcesError> {
        // Reading CPU usage once here makes the first probe's figure cover the time since now.
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )
        .map_err(|source| ResourcesError::System {
            what: "CPU and memory information",
            source,
        })?;
        let disks = Disks::new_with_refreshed_list_specifics(storage_only()).map_err(|source| {
            ResourcesError::System {
                what: "the mounted filesystems",
                source,
            }
        })?;
        let listed = u32::try_from(system.cpus().len()).unwrap_or(u32::MAX);
        // `available_parallelism` honours CPU affinity and cgroup quotas (containers).
        let allowed = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(listed);
        let cpus = match (listed, allowed) {
            (0, n) | (n, 0) => n,
            (a, b) => a.min(b),
        };
        Ok(Self {
            system,
            disks,
            disks_listed_at: Instant::now(),
            disk_for: None,
            cpus,
            nvml,
            gpu_faults: BTreeMap::new(),
            disk_missing_logged: false,
        })
    }

    /// Whether NVML was loaded.
    pub fn has_nvml(&self) -> bool {
        self.nvml.is_some()
    }

    /// Samples the machine now. `declared` GPUs are appended after the NVML ones (see the
    /// module doc); `disk_path` picks the filesystem reported as the disk (the agent's state
    /// directory; it need not exist yet — its nearest existing ancestor is used). Never fails:
    /// a disk that cannot be found is reported as 0 bytes, a GPU that NVML cannot read is left
    /// out (so capacity shrinks and the change is written), each logged once, not every tick.
    pub fn probe(&mut self, declared: &[GpuDeclaration], disk_path: &Path) -> Observed {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let (mut memory_total, mut memory_used) =
            (self.system.total_memory(), self.system.used_memory());
        if let Some(limits) = self.system.cgroup_limits() {
            if limits.total_memory > 0 && limits.total_memory < memory_total {
                memory_total = limits.total_memory;
                memory_used = limits.rss.min(memory_total);
            }
        }
        let host = HostSample {
            cpus: self.cpus,
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_total,
            memory_used,
            disk: self.sample_disk(disk_path),
        };
        let nvml = self.sample_nvml();
        let mut observed = compose(&host, &nvml, declared);
        observed.load_average = System::load_average()
            .ok()
            .map(|l| [l.one, l.five, l.fifteen]);
        observed
    }

    /// (total, available) bytes of the filesystem holding `path`.
    fn sample_disk(&mut self, path: &Path) -> Option<(u64, u64)> {
        let fresh = self.disks_listed_at.elapsed() < DISK_RELIST_INTERVAL;
        let cached = match &self.disk_for {
            Some((p, i)) if fresh && p == path => Some(*i),
            _ => None,
        };
        let index = match cached {
            Some(i) => {
                let disk = &mut self.disks[i];
                disk.refresh_specifics(storage_only());
                i
            }
            None => {
                self.disks.refresh_specifics(true, storage_only());
                self.disks_listed_at = Instant::now();
                self.disk_for = None;
                match find_disk(&self.disks, path) {
                    Some(i) => {
                        self.disk_for = Some((path.to_path_buf(), i));
                        self.disk_missing_logged = false;
                        i
                    }
                    None => {
                        if !self.disk_missing_logged {
                            tracing::warn!(path = %path.display(), "no filesystem found for the disk path; reporting disk as 0");
                            self.disk_missing_logged = true;
                        }
                        return None;
                    }
                }
            }
        };
        let disk = &self.disks[index];
        Some((disk.total_space(), disk.available_space()))
    }

    fn sample_nvml(&mut self) -> NvmlSample {
        let Some(nvml) = &self.nvml else {
            return NvmlSample::default();
        };
        let faults = &mut self.gpu_faults;
        let device_count = match nvml.device_count() {
            Ok(n) => {
                note_fault(faults, None, None);
                n
            }
            Err(e) => {
                note_fault(faults, None, Some(e));
                return NvmlSample::default();
            }
        };
        let mut gpus = Vec::with_capacity(device_count as usize);
        for index in 0..device_count {
            match sample_gpu(nvml, index) {
                Ok(gpu) => {
                    note_fault(faults, Some(index), None);
                    gpus.push(gpu);
                }
                Err(e) => note_fault(faults, Some(index), Some(e)),
            }
        }
        NvmlSample { device_count, gpus }
    }
}

fn storage_only() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage()
}

/// The listed filesystem holding `path`: the longest mount point that is a prefix of the path
/// (resolved through symlinks), preferring one on the same device; else any on the same device.
fn find_disk(disks: &[Disk], path: &Path) -> Option<usize> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(path);
    let device = std::fs::metadata(existing).ok().map(|m| m.dev());
    let resolved = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    let same_device = |d: &Disk| device.is_some() && d.id() == device;
    disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.total_space() > 0 && resolved.starts_with(d.mount_point()))
        .max_by_key(|(_, d)| (same_device(d), d.mount_point().as_os_str().len()))
        .or_else(|| {
            disks
                .iter()
                .enumerate()
                .find(|(_, d)| d.total_space() > 0 && same_device(d))
        })
        .map(|(i, _)| i)
}

fn sample_gpu(nvml: &Nvml, index: u32) -> Result<GpuSample, NvmlError> {
    let device = nvml.device_by_index(index)?;
    let memory = device.memory_info()?;
    Ok(GpuSample {
        index,
        uuid: device.uuid().unwrap_or_default(),
        model: device.name().unwrap_or_else(|_| "unknown".into()),
        memory_total: memory.total,
        memory_used: memory.used,
        util_percent: device.utilization_rates().ok().map(|u| u.gpu),
    })
}

/// Logs an NVML failure when it is new or different, and its recovery; never the same twice.
fn note_fault(
    faults: &mut BTreeMap<Option<u32>, String>,
    gpu: Option<u32>,
    error: Option<NvmlError>,
) {
    match error {
        Some(e) => {
            let message = e.to_string();
            if faults.get(&gpu) != Some(&message) {
                match gpu {
                    Some(index) => tracing::warn!(gpu = index, "GPU left out: {message}"),
                    None => tracing::warn!("NVML cannot count GPUs: {message}"),
                }
                faults.insert(gpu, message);
            }
        }
        None => {
            if faults.remove(&gpu).is_some() {
                match gpu {
                    Some(index) => tracing::info!(gpu = index, "GPU readable again"),
                    None => tracing::info!("NVML counts GPUs again"),
                }
            }
        }
    }
}

/// The host figures one probe read.
#[derive(Clone, Debug, Default)]
struct HostSample {
    cpus: u32,
    cpu_percent: f64,
    memory_total: u64,
    memory_used: u64,
    /// (total, available) bytes.
    disk: Option<(u64, u64)>,
}

/// One NVIDIA GPU as NVML reported it.
#[derive(Clone, Debug, Default)]
struct GpuSample {
    index: u32,
    uuid: String,
    model: String,
    memory_total: u64,
    memory_used: u64,
    util_percent: Option<u32>,
}

#[derive(Clone, Debug, Default)]
struct NvmlSample {
    /// NVML's device count, including GPUs that could not be read.
    device_count: u32,
    gpus: Vec<GpuSample>,
}

/// Capacity and usage from the raw samples. GPU memory usage is the sum used over the sum
/// total of the NVML GPUs; GPU utilisation is their mean; declared GPUs take no part in usage.
fn compose(host: &HostSample, nvml: &NvmlSample, declared: &[GpuDeclaration]) -> Observed {
    let mut gpus: Vec<Gpu> = nvml
        .gpus
        .iter()
        .map(|g| Gpu {
            index: g.index,
            uuid: g.uuid.clone(),
            model: g.model.clone(),
            memory_bytes: g.memory_total,
        })
        .collect();
    let mut next = nvml
        .gpus
        .iter()
        .map(|g| g.index.saturating_add(1))
        .fold(nvml.device_count, u32::max);
    let mut left = MAX_DECLARED_GPUS;
    for d in declared {
        let count = d.count.min(left);
        left -= count;
        let memory_bytes = d.memory_gb.map_or(0, |gb| (gb * GIB).round() as u64);
        for _ in 0..count {
            gpus.push(Gpu {
                index: next,
                uuid: String::new(),
                model: d.model.clone(),
                memory_bytes,
            });
            next = next.saturating_add(1);
        }
    }

    let (disk_total, disk_available) = host.disk.unwrap_or((0, 0));
    let gpu_memory_total: u64 = nvml.gpus.iter().map(|g| g.memory_total).sum();
    let gpu_memory_used: u64 = nvml.gpus.iter().map(|g| g.memory_used).sum();
    let utils: Vec<f64> = nvml
        .gpus
        .iter()
        .filter_map(|g| g.util_percent.map(f64::from))
        .collect();
    let gpu_util = if utils.is_empty() {
        0.0
    } else {
        utils.iter().sum::<f64>() / utils.len() as f64
    };
    Observed {
        capacity: Capacity {
            cpus: host.cpus,
            memory_bytes: host.memory_total,
            disk_bytes: disk_total,
            gpus,
        },
        usage: Usage {
            cpu_percent: percent_figure(host.cpu_percent),
            memory_percent: ratio_percent(host.memory_used, host.memory_total),
            disk_percent: ratio_percent(disk_total.saturating_sub(disk_available), disk_total),
            disk_available_bytes: host.disk.map(|(_, available)| available),
            gpu_memory_percent: ratio_percent(gpu_memory_used, gpu_memory_total),
            gpu_util_percent: percent_figure(gpu_util),
            gpus: nvml
                .gpus
                .iter()
                .map(|g| GpuUsage {
                    index: g.index,
                    util_percent: g.util_percent.map(|u| percent_figure(f64::from(u))),
                    memory_percent: ratio_percent(g.memory_used, g.memory_total),
                })
                .collect(),
        },
        load_average: None,
    }
}

/// `part / whole` in percent, 0 when `whole` is 0.
fn ratio_percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        percent_figure(part as f64 / whole as f64 * 100.0)
    }
}

/// A percentage clamped to [0, 100] and rounded to 0.1 (NaN → 0), so statuses read cleanly.
fn percent_figure(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        (p.clamp(0.0, 100.0) * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests;
