//! The scheduler's working copy of the cluster: per-node free GPUs (by model), cpus, memory and
//! resident jobs, computed once per [`schedule`](super::schedule) call and updated as jobs are
//! placed and evicted.

use std::collections::{BTreeMap, HashMap};

use super::gpu::{contains_words, words};
use super::{
    cmp_f64, NodeView, PendingJob, PlacementConfig, ScoringPolicy, Unfit, GIB, NODE_NAME_LABEL,
};
use crate::api::job::JobType;

/// Slack for comparing fractional cpu/memory requests.
const EPS: f64 = 1e-9;
/// Makes every priority positive in a priority sum (as kube-scheduler does), so that evicting
/// more jobs never looks cheaper.
const PRIORITY_OFFSET: i64 = 1 << 31;

/// (highest victim priority, offset priority sum, victims).
pub(super) type VictimCost = (i32, i64, usize);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Elig {
    /// Not in the job's `gpuModels`.
    No,
    /// Allowed model, below `minGpuPower`.
    Weak,
    Yes,
}

/// A pending job's requirements, resolved against the cluster's GPU models and Pools.
pub(super) struct Needs<'a> {
    job: &'a PendingJob,
    gpus: u32,
    cpus: f64,
    mem: f64,
    /// By model id; empty when `gpus` is 0.
    elig: Vec<Elig>,
    performance: bool,
    pool: Option<usize>,
}

struct Slot {
    index: u32,
    model: usize,
    power: f64,
    /// How many bindings hold this GPU (more than one only if bindings conflict).
    holders: u16,
}

struct ModelCount {
    model: usize,
    power: f64,
    total: u32,
    free: u32,
}

struct Resident<'a> {
    name: &'a str,
    priority: i32,
    cpus: f64,
    mem: f64,
    gpus: Vec<u32>,
    pool: Option<usize>,
    evicted: bool,
}

pub(super) struct NodeState<'a> {
    pub name: &'a str,
    labels: &'a BTreeMap<String, String>,
    /// Not ready or cordoned.
    down: Option<Unfit>,
    overloaded: bool,
    /// The agent reports `DiskPressure`.
    disk_pressure: bool,
    /// Bytes free for inputs (as last reported, less inputs placed in this call); `None`
    /// when the agent does not report it.
    disk_free: Option<u64>,
    load: f64,
    /// Sorted by index.
    slots: Vec<Slot>,
    /// Sorted by power, strongest first.
    models: Vec<ModelCount>,
    gpus_total: u32,
    gpus_free: u32,
    cpus_cap: f64,
    cpus_free: f64,
    mem_free: f64,
    residents: Vec<Resident<'a>>,
    /// The lowest priority among residents not evicted (`i32::MAX` when none).
    min_priority: i32,
    /// (pool id, jobs of that pool here).
    pools: Vec<(usize, u32)>,
}

pub(super) struct Cluster<'a> {
    /// Sorted by name.
    pub nodes: Vec<NodeState<'a>>,
    /// The strongest power in the table (normalises the power score).
    pub max_power: f64,
    model_words: Vec<Vec<String>>,
    model_power: Vec<f64>,
    pool_ids: HashMap<&'a str, usize>,
}

fn intern<'a>(ids: &mut HashMap<&'a str, usize>, name: &'a str) -> usize {
    let next = ids.len();
    *ids.entry(name).or_insert(next)
}

impl<'a> Cluster<'a> {
    pub fn new(views: &'a [NodeView], config: &PlacementConfig) -> Self {
        let mut views: Vec<&'a NodeView> = views.iter().collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let mut model_ids: HashMap<&'a str, usize> = HashMap::new();
        let mut model_words = Vec::new();
        let mut model_power = Vec::new();
        let mut pool_ids = HashMap::new();
        let mut nodes = Vec::with_capacity(views.len());
        for v in views {
            let status = v.status.as_ref();
            let down = match status {
                Some(s) if s.is_ready() => v.spec.unschedulable.then_some(Unfit::Unschedulable),
                _ => Some(Unfit::NotReady),
            };
            let mut slots: Vec<Slot> = Vec::new();
            let (mut cpus_cap, mut mem_cap) = (0.0, 0.0);
            if let Some(s) = status {
                cpus_cap = f64::from(s.capacity.cpus);
                mem_cap = s.capacity.memory_bytes as f64 / GIB;
                for g in &s.capacity.gpus {
                    let id = intern(&mut model_ids, &g.model);
                    if id == model_words.len() {
                        model_words.push(words(&g.model));
                        model_power.push(config.gpu_power(&g.model));
                    }
                    slots.push(Slot {
                        index: g.index,
                        model: id,
                        power: model_power[id],
                        holders: 0,
                    });
                }
            }
            slots.sort_by_key(|s| s.index);
            slots.dedup_by_key(|s| s.index);
            let mut node = NodeState {
                name: &v.name,
                labels: &v.labels,
                down,
                overloaded: status.is_some_and(|s| s.overloaded),
                disk_pressure: status.is_some_and(|s| s.has_disk_pressure()),
                disk_free: status.and_then(|s| s.usage.disk_available_bytes),
                load: status
                    .map(|s| s.load_score)
                    .filter(|l| l.is_finite())
                    .map_or(1.0, |l| l.clamp(0.0, 1.0)),
                gpus_total: slots.len() as u32,
                gpus_free: 0,
                slots,
                models: Vec::new(),
                cpus_cap,
                cpus_free: cpus_cap,
                mem_free: mem_cap,
                residents: Vec::with_capacity(v.bound.len()),
                min_priority: i32::MAX,
                pools: Vec::new(),
            };
            for b in &v.bound {
                let mut gpus = b.gpus.clone();
                gpus.sort_unstable();
                gpus.dedup();
                for g in &gpus {
                    if let Some(i) = node.slot(*g) {
                        node.slots[i].holders = node.slots[i].holders.saturating_add(1);
                    }
                }
                let pool = b.pool.as_deref().map(|p| intern(&mut pool_ids, p));
                node.add_resident(Resident {
                    name: &b.job,
                    priority: b.priority,
                    cpus: b.cpus,
                    mem: b.memory_gb,
                    gpus,
                    pool,
                    evicted: false,
                });
            }
            node.count_models();
            nodes.push(node);
        }
        let max_power = config
            .gpu_power
            .values()
            .copied()
            .chain([config.cpu_only_power])
            .filter(|p| p.is_finite())
            .fold(0.0, f64::max);
        Self {
            nodes,
            max_power: if max_power > 0.0 { max_power } else { 1.0 },
            model_words,
            model_power,
            pool_ids,
        }
    }

    pub fn needs(&mut self, job: &'a PendingJob) -> Needs<'a> {
        let r = &job.resources;
        let elig = if r.gpus == 0 {
            Vec::new()
        } else {
            let allowed: Vec<Vec<String>> = r.gpu_models.iter().map(|m| words(m)).collect();
            (0..self.model_words.len())
                .map(|m| {
                    let ok = allowed.is_empty()
                        || allowed
                            .iter()
                            .any(|a| contains_words(&self.model_words[m], a));
                    match r.min_gpu_power {
                        _ if !ok => Elig::No,
                        Some(p) if self.model_power[m] < p - EPS => Elig::Weak,
                        _ => Elig::Yes,
                    }
                })
                .collect()
        };
        Needs {
            job,
            gpus: r.gpus,
            cpus: r.cpus.unwrap_or(0.0),
            mem: r.memory_gb.unwrap_or(0.0),
            elig,
            performance: matches!(job.job_type, JobType::Training | JobType::Evaluation),
            pool: job.pool.as_deref().map(|p| intern(&mut self.pool_ids, p)),
        }
    }
}

impl<'a> NodeState<'a> {
    fn slot(&self, index: u32) -> Option<usize> {
        self.slots.binary_search_by_key(&index, |s| s.index).ok()
    }

    fn count_models(&mut self) {
        let mut models: Vec<ModelCount> = Vec::new();
        for s in &self.slots {
            let free = u32::from(s.holders == 0);
            match models.iter_mut().find(|m| m.model == s.model) {
                Some(m) => {
                    m.total += 1;
                    m.free += free;
                }
                None => models.push(ModelCount {
                    model: s.model,
                    power: s.power,
                    total: 1,
                    free,
                }),
            }
        }
        models.sort_by(|a, b| cmp_f64(b.power, a.power).then(a.model.cmp(&b.model)));
        self.gpus_free = models.iter().map(|m| m.free).sum();
        self.models = models;
    }

    fn pool_count(&self, pool: usize) -> u32 {
        self.pools.iter().find(|p| p.0 == pool).map_or(0, |p| p.1)
    }

    fn add_resident(&mut self, r: Resident<'a>) {
        self.cpus_free -= r.cpus;
        self.mem_free -= r.mem;
        self.min_priority = self.min_priority.min(r.priority);
        if let Some(p) = r.pool {
            match self.pools.iter_mut().find(|e| e.0 == p) {
                Some(e) => e.1 += 1,
                None => self.pools.push((p, 1)),
            }
        }
        self.residents.push(r);
    }

    /// The first rule this node fails for the job, if any.
    pub fn check(&self, n: &Needs) -> Result<(), Unfit> {
        if let Some(u) = self.down {
            return Err(u);
        }
        let selector = &n.job.node_selector;
        if !selector.is_empty()
            && !selector.iter().all(|(k, v)| {
                self.labels.get(k) == Some(v) || (k == NODE_NAME_LABEL && v == self.name)
            })
        {
            return Err(Unfit::NodeSelector);
        }
        let mut free = 0;
        if n.gpus > 0 {
            let (mut allowed, mut strong) = (0, 0);
            for m in &self.models {
                match n.elig[m.model] {
                    Elig::Yes => {
                        allowed += m.total;
                        strong += m.total;
                        free += m.free;
                    }
                    Elig::Weak => allowed += m.total,
                    Elig::No => {}
                }
            }
            if self.gpus_total >= n.gpus {
                if allowed < n.gpus {
                    return Err(Unfit::GpuModel);
                }
                if strong < n.gpus {
                    return Err(Unfit::GpuPower);
                }
            }
        }
        if self.overloaded {
            return Err(Unfit::Overloaded);
        }
        if self.disk_pressure {
            return Err(Unfit::DiskPressure);
        }
        if self.disk_free.is_some_and(|free| n.job.input_bytes > free) {
            return Err(Unfit::InsufficientDisk);
        }
        if free < n.gpus {
            return Err(Unfit::InsufficientGpus);
        }
        if n.cpus > self.cpus_free + EPS {
            return Err(Unfit::InsufficientCpu);
        }
        if n.mem > self.mem_free + EPS {
            return Err(Unfit::InsufficientMemory);
        }
        Ok(())
    }

    /// How much the job wants this node (it fits); see the module documentation.
    pub fn score(&self, n: &Needs, w: &ScoringPolicy, max_power: f64) -> f64 {
        let mut s = w.load_weight * (1.0 - self.load);
        if let Some(p) = n.pool {
            s -= w.spread_weight * f64::from(self.pool_count(p));
        }
        if n.gpus > 0 {
            if n.performance {
                let (mut left, mut sum) = (n.gpus, 0.0);
                for m in &self.models {
                    if left == 0 {
                        break;
                    }
                    if n.elig[m.model] == Elig::Yes {
                        let take = left.min(m.free);
                        sum += f64::from(take) * m.power;
                        left -= take;
                    }
                }
                s += w.power_weight * sum / f64::from(n.gpus) / max_power;
            } else {
                let used = self.gpus_total - self.gpus_free + n.gpus;
                s += w.pack_weight * f64::from(used) / f64::from(self.gpus_total);
            }
        } else {
            if !n.performance && self.cpus_cap > 0.0 {
                let used = (self.cpus_cap - self.cpus_free + n.cpus) / self.cpus_cap;
                s += w.pack_weight * used.clamp(0.0, 1.0);
            }
            if self.gpus_total > 0 {
                s -= w.spare_gpus_weight * f64::from(self.gpus_free) / f64::from(self.gpus_total);
            }
        }
        s
    }

    /// Binds the job here (it fits) and returns its GPU indices, ascending.
    pub fn place(&mut self, n: &Needs<'a>) -> Vec<u32> {
        let mut free: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i].holders == 0 && n.elig.get(self.slots[i].model) == Some(&Elig::Yes)
            })
            .collect();
        let preferred = |i: usize| Some(self.slots[i].index) == n.job.prefer_gpu;
        free.sort_by(|&a, &b| {
            let first = preferred(b).cmp(&preferred(a));
            let (a, b) = (&self.slots[a], &self.slots[b]);
            let by_power = if n.performance {
                cmp_f64(b.power, a.power)
            } else {
                cmp_f64(a.power, b.power)
            };
            first.then(by_power).then(a.index.cmp(&b.index))
        });
        let mut gpus = Vec::with_capacity(n.gpus as usize);
        for &i in free.iter().take(n.gpus as usize) {
            self.slots[i].holders = 1;
            let model = self.slots[i].model;
            if let Some(m) = self.models.iter_mut().find(|m| m.model == model) {
                m.free -= 1;
            }
            self.gpus_free -= 1;
            gpus.push(self.slots[i].index);
        }
        gpus.sort_unstable();
        self.disk_free = self
            .disk_free
            .map(|free| free.saturating_sub(n.job.input_bytes));
        self.add_resident(Resident {
            name: &n.job.name,
            priority: n.job.priority,
            cpus: n.cpus,
            mem: n.mem,
            gpus: gpus.clone(),
            pool: n.pool,
            evicted: false,
        });
        gpus
    }

    /// Whether the job would fit here once `victims` (resident indices) are gone.
    fn fits_without(&self, n: &Needs, victims: &[usize], holders: &mut Vec<u16>) -> bool {
        holders.clear();
        holders.extend(self.slots.iter().map(|s| s.holders));
        let (mut cpus, mut mem) = (self.cpus_free, self.mem_free);
        for &v in victims {
            let r = &self.residents[v];
            cpus += r.cpus;
            mem += r.mem;
            for g in &r.gpus {
                if let Some(i) = self.slot(*g) {
                    holders[i] = holders[i].saturating_sub(1);
                }
            }
        }
        let free = self
            .slots
            .iter()
            .zip(holders.iter())
            .filter(|(s, h)| **h == 0 && n.elig.get(s.model) == Some(&Elig::Yes))
            .count();
        free >= n.gpus as usize && n.cpus <= cpus + EPS && n.mem <= mem + EPS
    }

    /// The fewest, lowest-priority residents of strictly lower priority whose eviction makes
    /// the job fit, or `None` when evicting all of them would not.
    pub fn victims(&self, n: &Needs) -> Option<Vec<usize>> {
        let mut cands: Vec<usize> = (0..self.residents.len())
            .filter(|&i| !self.residents[i].evicted && self.residents[i].priority < n.job.priority)
            .collect();
        let mut holders = Vec::with_capacity(self.slots.len());
        if cands.is_empty() || !self.fits_without(n, &cands, &mut holders) {
            return None;
        }
        let useful = |r: &Resident| self.useful(n, r);
        cands.sort_by(|&a, &b| {
            let (a, b) = (&self.residents[a], &self.residents[b]);
            a.priority
                .cmp(&b.priority)
                .then(useful(b).cmp(&useful(a)))
                .then(a.name.cmp(b.name))
        });
        let mut chosen = Vec::new();
        for c in cands {
            chosen.push(c);
            if self.fits_without(n, &chosen, &mut holders) {
                break;
            }
        }
        // Reprieve, highest priority first, every victim the fit does not need.
        for i in (0..chosen.len()).rev() {
            let v = chosen.remove(i);
            if !self.fits_without(n, &chosen, &mut holders) {
                chosen.insert(i, v);
            }
        }
        Some(chosen)
    }

    /// (highest victim priority, sum of priorities each offset by 2^31 so that every term is
    /// positive, count): lower is a cheaper preemption.
    pub fn victim_cost(&self, victims: &[usize]) -> VictimCost {
        let prios = victims.iter().map(|&v| self.residents[v].priority);
        (
            prios.clone().max().unwrap_or(i32::MIN),
            prios.map(|p| i64::from(p) + PRIORITY_OFFSET).sum(),
            victims.len(),
        )
    }

    /// Whether anything here has a lower priority than `priority` (cheap).
    pub fn may_evict_for(&self, priority: i32) -> bool {
        self.min_priority < priority
    }

    /// How many of `r`'s GPUs the job could use.
    fn useful(&self, n: &Needs, r: &Resident) -> u32 {
        r.gpus
            .iter()
            .filter_map(|g| self.slot(*g))
            .filter(|&i| n.elig.get(self.slots[i].model) == Some(&Elig::Yes))
            .count() as u32
    }

    /// A lower bound on [`victim_cost`](Self::victim_cost) for any eviction here for the job:
    /// the fewest victims that could free enough eligible GPUs, all of the lowest evictable
    /// priority. `None` when no eviction here can free enough GPUs.
    pub fn cheapest_possible(&self, n: &Needs) -> Option<VictimCost> {
        if !self.may_evict_for(n.job.priority) {
            return None;
        }
        let free: u32 = self
            .models
            .iter()
            .filter(|m| n.elig.get(m.model) == Some(&Elig::Yes))
            .map(|m| m.free)
            .sum();
        let most = self
            .residents
            .iter()
            .filter(|r| !r.evicted && r.priority < n.job.priority)
            .map(|r| self.useful(n, r))
            .max()
            .unwrap_or(0);
        let fewest = match n.gpus.saturating_sub(free) {
            0 => 1,
            _ if most == 0 => return None,
            deficit => deficit.div_ceil(most) as usize,
        };
        let p = self.min_priority;
        Some((p, (i64::from(p) + PRIORITY_OFFSET) * fewest as i64, fewest))
    }

    /// Evicts residents, freeing what they held; returns their names.
    pub fn evict(&mut self, victims: &[usize]) -> Vec<String> {
        let mut names = Vec::with_capacity(victims.len());
        for &v in victims {
            self.residents[v].evicted = true;
            let gpus = std::mem::take(&mut self.residents[v].gpus);
            for g in gpus {
                if let Some(i) = self.slot(g) {
                    let s = &mut self.slots[i];
                    s.holders = s.holders.saturating_sub(1);
                    if s.holders == 0 {
                        let model = s.model;
                        if let Some(m) = self.models.iter_mut().find(|m| m.model == model) {
                            m.free += 1;
                        }
                        self.gpus_free += 1;
                    }
                }
            }
            let r = &self.residents[v];
            self.cpus_free += r.cpus;
            self.mem_free += r.mem;
            if let Some(p) = r.pool {
                if let Some(e) = self.pools.iter_mut().find(|e| e.0 == p) {
                    e.1 = e.1.saturating_sub(1);
                }
            }
            names.push(r.name.to_string());
        }
        self.min_priority = self
            .residents
            .iter()
            .filter(|r| !r.evicted)
            .map(|r| r.priority)
            .min()
            .unwrap_or(i32::MAX);
        names
    }
}
