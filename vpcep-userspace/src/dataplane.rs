//! Loading the kernel programs, attaching them to VM NICs and reading their counters.
use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use vpcep_common::{
    maps,
    stats::{Counter, Hook, Reason, stats_index},
};

/// The eBPF object built by this crate's build script (empty under `AYA_BUILD_SKIP=1`).
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpcep"))
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the eBPF object is empty: this binary was built with AYA_BUILD_SKIP=1")]
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
}

/// Where the programs attach on a VM NIC's host side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// XDP on the NIC's receive path.
    Xdp,
    /// TC (TCX on kernels ≥ 6.6) ingress.
    Tc,
}

/// Counters summed over CPUs, keyed by (hook, reason); zero slots are left out.
pub type Stats = BTreeMap<(&'static str, &'static str), Counter>;

/// The loaded programs and maps. Dropping it detaches what it attached.
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the embedded object into the kernel (programs are verified on first use).
    pub fn load() -> Result<Self, DataplaneError> {
        let bytes = object();
        if bytes.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let ebpf = EbpfLoader::new().load(bytes)?;
        Ok(Self { ebpf })
    }

    /// The XDP program, loaded into the kernel.
    pub fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let name = maps::PROG_XDP;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(prog)
    }

    /// The TC ingress program, loaded into the kernel.
    pub fn tc_ingress(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        let name = maps::PROG_TC_INGRESS;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
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
            Mode::Tc => {
                self.tc_ingress()?
                    .attach(iface, TcAttachType::Ingress)
                    .map_err(|source| DataplaneError::Program {
                        name: maps::PROG_TC_INGRESS,
                        source,
                    })?;
            }
        }
        Ok(())
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
