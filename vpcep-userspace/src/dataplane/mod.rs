//! Loading the kernel programs, attaching them to VM NICs, filling their maps and reading
//! their counters.
pub mod config;
pub mod detach;
pub mod pinned;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Array, HashMap, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, LinkError, LinkOrder, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcError,
            TcHandle,
        },
    },
    util::KernelVersion,
};
use vpcep_common::{
    endpoint::{
        Endpoint, EndpointCounters, EndpointFlows, EndpointKey, FlowEntry, FlowKey, GC_BATCH,
        GcRequest, LocalAddr, LocalNic, NodeConfig, PortKey, PortTarget, ProxyTemplate, RevEntry,
        RevKey, Service, TCP_PROXY_MODE_MASK, TunnelConfig, WhitelistKey,
    },
    maps,
    stats::{Counter, Hook, ProxyEvent, Reason, proxy_event_index, stats_index},
};

/// The eBPF object built by this crate's build script (empty under `AYA_BUILD_SKIP=1`).
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpcep"))
}

/// The TOA probe (`vpcep-ebpf/src/toa_probe.rs`): a sock_ops program for the tcp_proxy tests
/// that records the TOA option a backend's kernel receives. The agent never loads it.
pub fn toa_probe_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpcep-toa-probe"))
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this vpcep has no eBPF programs (built with AYA_BUILD_SKIP=1, for the control plane \
         and the CLI only); build it with cargo xtask build to run the agent or the data plane"
    )]
    NoObject,
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    #[error("program {0} not found in the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} not found in the eBPF object")]
    MissingMap(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the conntrack GC program refused its request")]
    Gc,
    #[error("link to pin at {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("adding the clsact qdisc to {iface} (needed for TC without TCX)")]
    Clsact {
        iface: String,
        #[source]
        source: TcError,
    },
    #[error("attaching {name} to {iface} ({mode:?})")]
    Attach {
        name: &'static str,
        iface: String,
        mode: TcAttach,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("reading the pinned map {path}")]
    PinnedMap {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "the map pinned at {path} is not the program's {name}: {mismatch}; remove the pin \
         (losing its entries) or give the new layout a new versioned name"
    )]
    MapMismatch {
        name: String,
        path: PathBuf,
        mismatch: String,
    },
    #[error("parsing the eBPF object")]
    Parse(#[source] aya_obj::ParseError),
}

/// How the TC programs attach to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// TCX where the kernel has it (Linux ≥ 6.6), netlink otherwise.
    #[default]
    Auto,
    /// A TCX link (Linux ≥ 6.6), pinned so that it outlives the process.
    Tcx,
    /// A cls_bpf filter in direct-action mode on the interface's `clsact` qdisc (created
    /// when missing) at [`NL_PRIORITY`]/[`NL_HANDLE`]; it outlives the process by itself and
    /// is replaced in place.
    Netlink,
}

impl TcAttach {
    /// `Auto` decided for the running kernel.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto
                if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) =>
            {
                Self::Tcx
            }
            Self::Auto => Self::Netlink,
            m => m,
        }
    }
}

/// Priority of this project's cls_bpf filters at TC ingress. One fixed priority and handle
/// per interface is what lets a restarted agent find its filter and replace it in place
/// (an auto-assigned priority would add a filter per attempt).
pub const NL_PRIORITY: u16 = 64;
/// Handle of this project's cls_bpf filters (at [`NL_PRIORITY`]).
pub const NL_HANDLE: u32 = 1;

/// What a persistent attach found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new attachment was made.
    Created,
    /// An earlier run's attachment now runs this program (swapped in one kernel operation).
    Replaced,
    /// An earlier run's attachment was left as it is (TCX link pin, no reload asked for).
    Kept,
}

/// Checks that the pinned map behind `path` has the shape the object declares for `name`.
fn check_pinned_map(name: &str, def: &aya_obj::Map, path: &Path) -> Result<(), DataplaneError> {
    let pinned = aya::maps::MapData::from_pin(path)
        .and_then(|m| m.info())
        .map_err(|source| DataplaneError::PinnedMap {
            path: path.to_owned(),
            source,
        })?;
    let want_type = aya_obj::generated::bpf_map_type::try_from(def.map_type())
        .ok()
        .and_then(|t| aya::maps::MapType::try_from(t).ok());
    let have_type = pinned.map_type().ok();
    let mut diffs = Vec::new();
    if want_type.is_none() || have_type != want_type {
        let show = |t: Option<aya::maps::MapType>| {
            t.map_or_else(|| "unknown".to_owned(), |t| format!("{t:?}"))
        };
        diffs.push(format!(
            "type {} (pinned) != {}",
            show(have_type),
            show(want_type)
        ));
    }
    for (what, have, want) in [
        ("key size", pinned.key_size(), def.key_size()),
        ("value size", pinned.value_size(), def.value_size()),
        ("max_entries", pinned.max_entries(), def.max_entries()),
    ] {
        if have != want {
            diffs.push(format!("{what} {have} (pinned) != {want}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(DataplaneError::MapMismatch {
            name: name.to_owned(),
            path: path.to_owned(),
            mismatch: diffs.join(", "),
        })
    }
}

/// Where the programs attach on a VM NIC's host side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// XDP on the NIC's receive path.
    Xdp,
    /// TC ingress (TCX on kernels ≥ 6.6, netlink cls_bpf otherwise: see [`TcAttach`]).
    Tc,
}

/// Counters summed over CPUs, keyed by (hook, reason); zero slots are left out.
pub type Stats = BTreeMap<(&'static str, &'static str), Counter>;

/// How long a configuration slot just switched away from is left alone (far longer than
/// any program run holding it).
pub const CONFIG_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// The loaded programs and maps. Dropping it detaches what it attached, except the
/// attachments made to outlive it ([`Self::attach_persistent`]).
pub struct Dataplane {
    ebpf: Ebpf,
    tc_attach: TcAttach,
    /// When `NODE` and `TUNNEL` were last switched (see `switch_config`).
    switched: [Option<std::time::Instant>; 2],
}

impl Dataplane {
    /// Loads the embedded object into the kernel (programs are verified on first use).
    pub fn load() -> Result<Self, DataplaneError> {
        let bytes = object();
        if bytes.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let ebpf = EbpfLoader::new().load(bytes)?;
        Ok(Self::new(ebpf))
    }

    /// Loads the embedded object, reusing the maps pinned under `dir` (the ones missing are
    /// created and pinned there), so that a restarted agent keeps the state and the flows
    /// of the one before it.
    pub fn load_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        let bytes = object();
        if bytes.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
        let paths: Vec<(&'static str, PathBuf)> =
            maps::ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect();
        // aya reuses a pin by name whatever its shape: check each one against the object
        // first, so that a map of another layout is refused rather than misread.
        let obj = aya_obj::Object::parse(bytes).map_err(DataplaneError::Parse)?;
        for (name, path) in &paths {
            if let Some(def) = obj.maps.get(*name)
                && path.exists()
            {
                check_pinned_map(name, def, path)?;
            }
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(bytes)?;
        Ok(Self::new(ebpf))
    }

    fn new(ebpf: Ebpf) -> Self {
        Self {
            ebpf,
            tc_attach: TcAttach::Auto.resolve(),
            switched: [None; 2],
        }
    }

    /// Chooses how TC programs attach from now on (default: [`TcAttach::Auto`]).
    pub fn set_tc_attach(&mut self, mode: TcAttach) {
        self.tc_attach = mode.resolve();
    }

    /// How TC programs attach ([`TcAttach::Tcx`] or [`TcAttach::Netlink`]).
    pub fn tc_attach(&self) -> TcAttach {
        self.tc_attach
    }

    /// Attaches program `name` (a TC program of the object) at TC ingress of `iface` so that
    /// the attachment outlives this process, taking over what an earlier run left there
    /// without a moment without a program:
    /// * TCX: a link pinned at `pin` is kept, or with `replace` updated to this program
    ///   (`BPF_LINK_UPDATE`); without a pin a new link is made and pinned there. If pinning
    ///   fails the new link is released: nothing is left attached.
    /// * netlink: the filter at [`NL_PRIORITY`]/[`NL_HANDLE`] gets this program in place
    ///   (`RTM_NEWTFILTER` without `NLM_F_CREATE`), or is created when there is none;
    ///   `pin` is not used. However often it is called, there is one filter.
    pub fn attach_persistent(
        &mut self,
        name: &'static str,
        iface: &str,
        pin: &Path,
        replace: bool,
    ) -> Result<Attached, DataplaneError> {
        match self.tc_attach {
            TcAttach::Netlink => {
                let (id, how) = self.attach_netlink(name, iface)?;
                let link = self
                    .tc_named(name)?
                    .take_link(id)
                    .map_err(|source| DataplaneError::Program { name, source })?;
                // Dropping the link would delete the filter; a netlink filter holds no fd,
                // so forgetting it leaks nothing and leaves the filter to the next run.
                std::mem::forget(link);
                Ok(how)
            }
            _ if pin.exists() && !replace => Ok(Attached::Kept),
            _ if pin.exists() => {
                let err = |source| DataplaneError::Link {
                    path: pin.to_owned(),
                    source,
                };
                let fd: FdLink = PinnedLink::from_pin(pin).map_err(err)?.into();
                let link = SchedClassifierLink::try_from(fd).map_err(err)?;
                let prog = self.tc_named(name)?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|source| DataplaneError::Program { name, source })?;
                // The pin keeps the updated link; this fd can go.
                drop(prog.take_link(id));
                Ok(Attached::Replaced)
            }
            mode => {
                let id = self.attach_tcx(name, iface, mode)?;
                let link = self
                    .tc_named(name)?
                    .take_link(id)
                    .map_err(|source| DataplaneError::Program { name, source })?;
                let link: FdLink = link.try_into().map_err(|source| DataplaneError::Link {
                    path: pin.to_owned(),
                    source,
                })?;
                link.pin(pin).map_err(|source| DataplaneError::Pin {
                    path: pin.to_owned(),
                    source,
                })?;
                Ok(Attached::Created)
            }
        }
    }

    /// Adds the `clsact` qdisc netlink TC filters hang from, unless `iface` has one. It is
    /// never removed: other filters may use it.
    fn ensure_clsact(iface: &str) -> Result<(), DataplaneError> {
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => Ok(()),
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(DataplaneError::Clsact {
                iface: iface.to_owned(),
                source,
            }),
        }
    }

    /// Puts program `name` in the filter at [`NL_PRIORITY`]/[`NL_HANDLE`] on `iface`:
    /// replaced in place when it exists, created otherwise. The link stays in the program's
    /// set (deleted on drop) unless the caller takes it.
    fn attach_netlink(
        &mut self,
        name: &'static str,
        iface: &str,
    ) -> Result<(SchedClassifierLinkId, Attached), DataplaneError> {
        Self::ensure_clsact(iface)?;
        let err = |source| DataplaneError::Attach {
            name,
            iface: iface.to_owned(),
            mode: TcAttach::Netlink,
            source: Box::new(source),
        };
        let handle = TcHandle::from(NL_HANDLE);
        let existing =
            SchedClassifierLink::attached(iface, TcAttachType::Ingress, NL_PRIORITY, handle, None)
                .map_err(|e| err(ProgramError::IOError(e)))?;
        let prog = self.tc_named(name)?;
        match prog.attach_to_link(existing) {
            Ok(id) => Ok((id, Attached::Replaced)),
            // No filter there yet (the kernel wants NLM_F_CREATE for a new one).
            Err(ProgramError::TcError(TcError::NetlinkError(e)))
                if e.raw_os_error() == Some(libc::ENOENT) =>
            {
                let opts = NlOptions {
                    priority: NL_PRIORITY,
                    handle,
                    classid: None,
                };
                let id = prog
                    .attach_with_options(
                        iface,
                        TcAttachType::Ingress,
                        TcAttachOptions::Netlink(opts),
                    )
                    .map_err(err)?;
                Ok((id, Attached::Created))
            }
            Err(source) => Err(err(source)),
        }
    }

    /// Attaches TC program `name` at ingress of `iface` for the life of this value.
    fn attach_tc_transient(
        &mut self,
        name: &'static str,
        iface: &str,
    ) -> Result<(), DataplaneError> {
        match self.tc_attach {
            TcAttach::Netlink => self.attach_netlink(name, iface).map(|_| ()),
            mode => self.attach_tcx(name, iface, mode).map(|_| ()),
        }
    }

    /// Attaches TC program `name` at ingress of `iface` through TCX (`mode`, as chosen, is
    /// named in the error); the link lives as long as this value unless taken.
    fn attach_tcx(
        &mut self,
        name: &'static str,
        iface: &str,
        mode: TcAttach,
    ) -> Result<SchedClassifierLinkId, DataplaneError> {
        self.tc_named(name)?
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| DataplaneError::Attach {
                name,
                iface: iface.to_owned(),
                mode,
                source: Box::new(source),
            })
    }

    /// Pins the TC ingress program at `path` (replacing an older pin), for inspection
    /// with bpftool and so that it outlives the process with its links.
    pub fn pin_tc_program(&mut self, path: &Path) -> Result<(), DataplaneError> {
        let _ = std::fs::remove_file(path);
        self.tc_ingress()?
            .pin(path)
            .map_err(|source| DataplaneError::Pin {
                path: path.to_owned(),
                source,
            })
    }

    /// The XDP program, loaded into the kernel.
    pub fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.xdp_named(maps::PROG_XDP)
    }

    /// The TC ingress program, loaded into the kernel.
    pub fn tc_ingress(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.tc_named(maps::PROG_TC_INGRESS)
    }

    /// An XDP program of the object by name (e.g. the no-op baseline), loaded.
    pub fn xdp_named(&mut self, name: &'static str) -> Result<&mut Xdp, DataplaneError> {
        self.loaded(name)
    }

    /// A TC program of the object by name (e.g. the no-op baseline), loaded.
    pub fn tc_named(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DataplaneError> {
        self.loaded(name)
    }

    /// The program `name` as its type `P`, loaded into the kernel on first use.
    fn loaded<'a, P: Loadable>(
        &'a mut self,
        name: &'static str,
    ) -> Result<&'a mut P, DataplaneError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let err = |source| DataplaneError::Program { name, source };
        let prog: &mut P = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(err)?;
        prog.load_once().map_err(err)?;
        Ok(prog)
    }

    /// Attaches to `iface` in the caller's network namespace; detached on drop.
    pub fn attach(&mut self, iface: &str, mode: Mode) -> Result<(), DataplaneError> {
        match mode {
            Mode::Xdp => {
                self.xdp()?
                    .attach(iface, XdpMode::Default)
                    .map_err(|source| DataplaneError::Program {
                        name: maps::PROG_XDP,
                        source,
                    })?;
            }
            Mode::Tc => self.attach_tc_transient(maps::PROG_TC_INGRESS, iface)?,
        }
        Ok(())
    }

    fn entries<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Vec<(K, V)>, DataplaneError> {
        self.hash::<K, V>(name)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Records that SNAT address `snat_be` belongs to the node at underlay `underlay_be`
    /// (where replies to it are tunnelled).
    pub fn set_snat_owner(&mut self, snat_be: u32, underlay_be: u32) -> Result<(), DataplaneError> {
        self.put(maps::SNAT_OWNERS, snat_be, underlay_be)
    }

    pub fn remove_snat_owner(&mut self, snat_be: u32) -> Result<(), DataplaneError> {
        self.del::<u32, u32>(maps::SNAT_OWNERS, &snat_be)
    }

    /// Every `SNAT_OWNERS` entry.
    pub fn snat_owners(&mut self) -> Result<Vec<(u32, u32)>, DataplaneError> {
        self.entries(maps::SNAT_OWNERS)
    }

    /// Every `LOCAL_NICS` entry.
    pub fn local_nics(&mut self) -> Result<Vec<(u32, LocalNic)>, DataplaneError> {
        self.entries(maps::LOCAL_NICS)
    }

    /// Every `ENDPOINTS` entry.
    pub fn endpoints(&mut self) -> Result<Vec<(EndpointKey, Endpoint)>, DataplaneError> {
        self.entries(maps::ENDPOINTS)
    }

    /// Every `PORT_MAP` entry.
    pub fn ports(&mut self) -> Result<Vec<(PortKey, PortTarget)>, DataplaneError> {
        self.entries(maps::PORT_MAP)
    }

    /// Every `SERVICES` entry.
    pub fn services(&mut self) -> Result<Vec<(u32, Service)>, DataplaneError> {
        self.entries(maps::SERVICES)
    }

    /// Every source-whitelist rule as (endpoint id, source, prefix length of the source).
    pub fn sources(&mut self) -> Result<Vec<(u32, u32, u32)>, DataplaneError> {
        let name = maps::SRC_WHITELIST;
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let trie: LpmTrie<&MapData, WhitelistKey, u32> =
            LpmTrie::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        trie.keys()
            .map(|k| {
                k.map(|k| {
                    let d = k.data();
                    (
                        u32::from_be(d.endpoint_id_be),
                        d.src_be,
                        k.prefix_len().saturating_sub(32),
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// The `NODE` configuration in use.
    pub fn node(&self) -> Result<NodeConfig, DataplaneError> {
        let slot = self.config_slot(maps::CFG_NODE)?;
        self.array_get(maps::NODE, slot)
    }

    fn hash<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        HashMap::try_from(map).map_err(|source| DataplaneError::Map { name, source })
    }

    fn put<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        k: K,
        v: V,
    ) -> Result<(), DataplaneError> {
        self.hash::<K, V>(name)?
            .insert(k, v, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    fn del<K: Pod, V: Pod>(&mut self, name: &'static str, k: &K) -> Result<(), DataplaneError> {
        match self.hash::<K, V>(name)?.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map { name, source }),
        }
    }

    /// Declares `ifindex` the host side of a VM NIC.
    pub fn set_local_nic(&mut self, ifindex: u32, nic: LocalNic) -> Result<(), DataplaneError> {
        self.put(maps::LOCAL_NICS, ifindex, nic)
    }

    pub fn set_endpoint(&mut self, key: EndpointKey, ep: Endpoint) -> Result<(), DataplaneError> {
        self.put(maps::ENDPOINTS, key, ep)
    }

    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<(), DataplaneError> {
        self.del::<EndpointKey, Endpoint>(maps::ENDPOINTS, key)
    }

    pub fn set_port(&mut self, key: PortKey, target: PortTarget) -> Result<(), DataplaneError> {
        self.put(maps::PORT_MAP, key, target)
    }

    pub fn set_service(&mut self, id: u32, svc: Service) -> Result<(), DataplaneError> {
        self.put(maps::SERVICES, id, svc)
    }

    fn whitelist(&mut self) -> Result<LpmTrie<&mut MapData, WhitelistKey, u32>, DataplaneError> {
        let name = maps::SRC_WHITELIST;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        LpmTrie::try_from(map).map_err(|source| DataplaneError::Map { name, source })
    }

    /// The endpoint id is always matched in full: a rule for `src/prefix` has prefix length
    /// `32 + prefix`.
    fn whitelist_key(endpoint_id: u32, src_be: u32, prefix: u32) -> Key<WhitelistKey> {
        Key::new(
            32 + prefix.min(32),
            WhitelistKey {
                endpoint_id_be: endpoint_id.to_be(),
                src_be,
            },
        )
    }

    /// Allows `src/prefix` for new flows to endpoint `endpoint_id`.
    pub fn allow_source(
        &mut self,
        endpoint_id: u32,
        src_be: u32,
        prefix: u32,
    ) -> Result<(), DataplaneError> {
        let key = Self::whitelist_key(endpoint_id, src_be, prefix);
        self.whitelist()?
            .insert(&key, 1, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::SRC_WHITELIST,
                source,
            })
    }

    pub fn set_node(&mut self, node: NodeConfig) -> Result<(), DataplaneError> {
        self.switch_config(maps::CFG_NODE, maps::NODE, node)
    }

    /// This node's overlay device (ifindex 0 = none: remote backends are dropped).
    pub fn set_tunnel(&mut self, t: TunnelConfig) -> Result<(), DataplaneError> {
        self.switch_config(maps::CFG_TUNNEL, maps::TUNNEL, t)
    }

    pub fn tunnel(&self) -> Result<TunnelConfig, DataplaneError> {
        let slot = self.config_slot(maps::CFG_TUNNEL)?;
        self.array_get(maps::TUNNEL, slot)
    }

    /// The slot of `NODE` or `TUNNEL` the programs use (`CONFIG_SLOT[which]`).
    fn config_slot(&self, which: u32) -> Result<u32, DataplaneError> {
        Ok(self.array_get::<u32>(maps::CONFIG_SLOT, which)? & 1)
    }

    /// Writes `v` whole into the slot of `name` the programs do not use, then switches
    /// them to it, so that no packet sees a half-written configuration. A program holds a
    /// slot for the microseconds of one packet; the slot just left is not written again
    /// for [`CONFIG_GRACE`].
    fn switch_config<V: Pod>(
        &mut self,
        which: u32,
        name: &'static str,
        v: V,
    ) -> Result<(), DataplaneError> {
        if let Some(at) = self.switched[which as usize] {
            let since = at.elapsed();
            if since < CONFIG_GRACE {
                std::thread::sleep(CONFIG_GRACE - since);
            }
        }
        let next = self.config_slot(which)? ^ 1;
        self.array_set(name, next, v)?;
        self.array_set(maps::CONFIG_SLOT, which, next)?;
        self.switched[which as usize] = Some(std::time::Instant::now());
        Ok(())
    }

    fn array_get<V: Pod>(&self, name: &'static str, index: u32) -> Result<V, DataplaneError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let array: Array<&MapData, V> =
            Array::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        array
            .get(&index, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    fn array_set<V: Pod>(
        &mut self,
        name: &'static str,
        index: u32,
        v: V,
    ) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let mut array: Array<&mut MapData, V> =
            Array::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        array
            .set(index, v, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Where the tunnel program delivers packets for the local VM `key` (VNI, address).
    pub fn set_local_addr(&mut self, key: EndpointKey, a: LocalAddr) -> Result<(), DataplaneError> {
        self.put(maps::LOCAL_ADDRS, key, a)
    }

    pub fn remove_local_addr(&mut self, key: &EndpointKey) -> Result<(), DataplaneError> {
        self.del::<EndpointKey, LocalAddr>(maps::LOCAL_ADDRS, key)
    }

    /// Every `LOCAL_ADDRS` entry.
    pub fn local_addrs(&mut self) -> Result<Vec<(EndpointKey, LocalAddr)>, DataplaneError> {
        self.entries(maps::LOCAL_ADDRS)
    }

    /// Queries from NIC `ifindex` to `addr_be` (its subnet's DNS address) go up to the
    /// node resolver.
    pub fn set_dns_nic(&mut self, ifindex: u32, addr_be: u32) -> Result<(), DataplaneError> {
        self.put(maps::DNS_NICS, ifindex, addr_be)
    }

    pub fn remove_dns_nic(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.del::<u32, u32>(maps::DNS_NICS, &ifindex)
    }

    /// Every `DNS_NICS` entry.
    pub fn dns_nics(&mut self) -> Result<Vec<(u32, u32)>, DataplaneError> {
        self.entries(maps::DNS_NICS)
    }

    /// The program for the node's VXLAN device, loaded into the kernel.
    pub fn tc_tunnel(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.tc_named(maps::PROG_TC_TUNNEL)
    }

    /// Attaches the tunnel program to the VXLAN device `iface` (TC ingress) in the caller's
    /// network namespace; detached on drop.
    pub fn attach_tunnel(&mut self, iface: &str) -> Result<(), DataplaneError> {
        self.attach_tc_transient(maps::PROG_TC_TUNNEL, iface)
    }

    fn get<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
        key: &K,
    ) -> Result<Option<V>, DataplaneError> {
        match self.hash::<K, V>(name)?.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map { name, source }),
        }
    }

    pub fn flow(&mut self, key: &FlowKey) -> Result<Option<FlowEntry>, DataplaneError> {
        self.get(maps::CT_FWD, key)
    }

    pub fn insert_flow(&mut self, key: FlowKey, entry: FlowEntry) -> Result<(), DataplaneError> {
        self.put(maps::CT_FWD, key, entry)
    }

    pub fn insert_rev(&mut self, key: RevKey, entry: RevEntry) -> Result<(), DataplaneError> {
        self.put(maps::CT_REV, key, entry)
    }

    pub fn rev(&mut self, key: &RevKey) -> Result<Option<RevEntry>, DataplaneError> {
        self.get(maps::CT_REV, key)
    }

    pub fn remove_local_nic(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.del::<u32, LocalNic>(maps::LOCAL_NICS, &ifindex)
    }

    pub fn remove_port(&mut self, key: &PortKey) -> Result<(), DataplaneError> {
        self.del::<PortKey, PortTarget>(maps::PORT_MAP, key)
    }

    pub fn remove_service(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.del::<u32, Service>(maps::SERVICES, &id)
    }

    /// Removes a rule added by [`Self::allow_source`].
    pub fn disallow_source(
        &mut self,
        endpoint_id: u32,
        src_be: u32,
        prefix: u32,
    ) -> Result<(), DataplaneError> {
        let key = Self::whitelist_key(endpoint_id, src_be, prefix);
        match self.whitelist()?.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map {
                name: maps::SRC_WHITELIST,
                source,
            }),
        }
    }

    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DataplaneError> {
        self.del::<FlowKey, FlowEntry>(maps::CT_FWD, key)
    }

    pub fn remove_rev(&mut self, key: &RevKey) -> Result<(), DataplaneError> {
        self.del::<RevKey, RevEntry>(maps::CT_REV, key)
    }

    /// Every forward conntrack entry.
    pub fn flows(&mut self) -> Result<Vec<(FlowKey, FlowEntry)>, DataplaneError> {
        let name = maps::CT_FWD;
        self.hash::<FlowKey, FlowEntry>(name)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Hands up to [`GC_BATCH`] keys to the GC program and runs it (BPF_PROG_TEST_RUN):
    /// forward keys for `GC_EXPIRED`/`GC_FLUSH`, claims for `GC_ORPHAN_CLAIMS`. The program
    /// judges each entry itself, at that instant, so a stale view here never removes a
    /// newer flow. Returns (removed, busy).
    pub fn gc(
        &mut self,
        mode: u32,
        flows: &[FlowKey],
        claims: &[RevKey],
    ) -> Result<(u32, u32), DataplaneError> {
        let mut req = GcRequest {
            mode,
            ..GcRequest::default()
        };
        let n = flows.len().max(claims.len()).min(GC_BATCH);
        req.count = n as u32;
        for (slot, k) in req.flows.iter_mut().zip(flows) {
            *slot = *k;
        }
        for (slot, k) in req.claims.iter_mut().zip(claims) {
            *slot = *k;
        }
        self.array_set(maps::GC_REQUEST, 0, req)?;
        let name = maps::PROG_GC;
        // Any frame will do: the program reads only its request.
        let frame = [0u8; 64];
        let res = self
            .tc_named(name)?
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..Default::default()
            })
            .map_err(|source| DataplaneError::Program { name, source })?;
        if res.return_value != 0 {
            return Err(DataplaneError::Gc);
        }
        let done: GcRequest = self.array_get(maps::GC_REQUEST, 0)?;
        Ok((done.removed, done.busy))
    }

    /// An endpoint's flow accounting (live flows, new flows this second).
    pub fn endpoint_flows(&self, endpoint_id: u32) -> Result<EndpointFlows, DataplaneError> {
        self.array_get(maps::EP_FLOWS, endpoint_id)
    }

    /// Zeroes an endpoint id's flow accounting (the id is given to a new endpoint).
    pub fn reset_endpoint_flows(&mut self, endpoint_id: u32) -> Result<(), DataplaneError> {
        self.array_set(maps::EP_FLOWS, endpoint_id, EndpointFlows::default())
    }

    /// Every reverse conntrack entry.
    pub fn revs(&mut self) -> Result<Vec<(RevKey, RevEntry)>, DataplaneError> {
        let name = maps::CT_REV;
        self.hash::<RevKey, RevEntry>(name)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// One verdict counter, summed over CPUs.
    pub fn counter(&self, hook: Hook, reason: Reason) -> Result<Counter, DataplaneError> {
        let name = maps::STATS;
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let array: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        let values = array
            .get(&stats_index(hook, reason), 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        Ok(values.iter().fold(Counter::default(), |a, c| Counter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        }))
    }

    /// The TLVs of endpoint `endpoint_id`'s PROXY header (tcp_proxy).
    pub fn set_proxy_template(
        &mut self,
        endpoint_id: u32,
        t: ProxyTemplate,
    ) -> Result<(), DataplaneError> {
        self.array_set(maps::PROXY_TEMPLATES, endpoint_id, t)
    }

    /// tcp_proxy events of flows of mode `tcp_proxy` (the placement bit ignored), summed
    /// over CPUs.
    pub fn proxy_event(&self, tcp_proxy: u8, e: ProxyEvent) -> Result<u64, DataplaneError> {
        let name = maps::PROXY_STATS;
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        let values = array
            .get(&proxy_event_index(tcp_proxy & TCP_PROXY_MODE_MASK, e), 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        Ok(values.iter().sum())
    }

    /// Per-endpoint counters summed over CPUs.
    pub fn endpoint_counters(&self, endpoint_id: u32) -> Result<EndpointCounters, DataplaneError> {
        let name = maps::EP_STATS;
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let array: PerCpuArray<_, EndpointCounters> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        let values = array
            .get(&endpoint_id, 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        Ok(values
            .iter()
            .fold(EndpointCounters::default(), |a, c| EndpointCounters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
                new_flows: a.new_flows + c.new_flows,
                drops: a.drops + c.drops,
            }))
    }

    /// Reads the verdict counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, DataplaneError> {
        let name = maps::STATS;
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        let array: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        let mut out = Stats::new();
        for hook in Hook::ALL {
            for reason in Reason::ALL {
                let values = array
                    .get(&stats_index(hook, *reason), 0)
                    .map_err(|source| DataplaneError::Map { name, source })?;
                let sum = values.iter().fold(Counter::default(), |a, c| Counter {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                });
                if sum.packets != 0 {
                    out.insert((hook.name(), reason.name()), sum);
                }
            }
        }
        Ok(out)
    }
}

/// The program types [`Dataplane`] loads by name: their `load` takes no arguments.
trait Loadable {
    /// Loads the program unless it is loaded already.
    fn load_once(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl Loadable for Xdp {
    fn load_once(&mut self) -> Result<(), aya::programs::ProgramError> {
        if self.fd().is_err() {
            self.load()?;
        }
        Ok(())
    }
}

// Repeats the XDP impl: `load` and `fd` are inherent methods of each program type, with no
// trait of aya's to be generic over.
impl Loadable for SchedClassifier {
    fn load_once(&mut self) -> Result<(), aya::programs::ProgramError> {
        if self.fd().is_err() {
            self.load()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// What an object-less build (`AYA_BUILD_SKIP=1`) says when asked to load programs.
    #[test]
    fn an_object_less_build_says_how_to_get_the_programs() {
        let msg = super::DataplaneError::NoObject.to_string();
        assert!(
            msg.contains("AYA_BUILD_SKIP=1") && msg.contains("cargo xtask build"),
            "{msg}"
        );
    }
}
