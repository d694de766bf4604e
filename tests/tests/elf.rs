//! Unprivileged: the object embedded in the userspace binary holds every map and program
//! the userspace expects, with the expected types.
use aya_obj::{Object, ProgramSection};
use vpcep_common::maps;

fn object() -> Object {
    let bytes = vpcep::dataplane::object();
    assert!(
        !bytes.is_empty(),
        "eBPF object is empty (built with AYA_BUILD_SKIP=1?)"
    );
    Object::parse(bytes).unwrap()
}

#[test]
fn object_contains_every_map() {
    let obj = object();
    for name in maps::ALL_MAPS {
        assert!(
            obj.maps.contains_key(*name),
            "map {name} missing; have {:?}",
            obj.maps.keys()
        );
    }
}

/// Conntrack tables are plain hash maps: an LRU map would evict live flows (or half of
/// one) under pressure; a full hash map refuses the new flow instead.
#[test]
fn conntrack_tables_never_evict() {
    let obj = object();
    for name in [maps::CT_FWD, maps::CT_REV] {
        let t = obj.maps[name].map_type();
        assert_eq!(
            t,
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32,
            "{name}"
        );
        assert_eq!(obj.maps[name].max_entries(), maps::MAX_FLOWS, "{name}");
    }
}

/// The benchmark-only programs: in the object only when built with the `bench` feature.
const BENCH_PROGRAMS: &[&str] = &[
    maps::PROG_NOOP_XDP,
    maps::PROG_NOOP_TC,
    maps::PROG_FLOOR_ESTABLISHED,
    maps::PROG_FLOOR_NEW_FLOW,
];

#[test]
fn object_contains_every_program_with_its_type() {
    let obj = object();
    let expected = maps::ALL_PROGRAMS
        .iter()
        .filter(|name| cfg!(feature = "bench") || !BENCH_PROGRAMS.contains(name));
    for name in expected {
        let prog = obj
            .programs
            .get(*name)
            .unwrap_or_else(|| panic!("program {name} missing; have {:?}", obj.programs.keys()));
        let ok = match *name {
            maps::PROG_XDP | maps::PROG_NOOP_XDP => {
                matches!(prog.section, ProgramSection::Xdp { .. })
            }
            maps::PROG_TC_INGRESS
            | maps::PROG_TC_TUNNEL
            | maps::PROG_GC
            | maps::PROG_NOOP_TC
            | maps::PROG_FLOOR_ESTABLISHED
            | maps::PROG_FLOOR_NEW_FLOW => {
                matches!(prog.section, ProgramSection::SchedClassifier)
            }
            _ => false,
        };
        assert!(ok, "program {name} has section {:?}", prog.section);
    }
}

/// The shipped object (built without the `bench` feature) carries no benchmark program.
#[cfg(not(feature = "bench"))]
#[test]
fn production_object_has_no_bench_programs() {
    let obj = object();
    for name in BENCH_PROGRAMS {
        assert!(
            !obj.programs.contains_key(*name),
            "benchmark program {name} in the production object"
        );
    }
}

#[test]
fn stats_map_has_a_slot_per_hook_and_reason() {
    let obj = object();
    let map = &obj.maps[maps::STATS];
    assert_eq!(map.max_entries(), vpcep_common::stats::STATS_ENTRIES);
    assert_eq!(
        map.value_size() as usize,
        size_of::<vpcep_common::stats::Counter>()
    );
}

/// No program can reach a panic (its handler would be an endless loop the verifier
/// refuses): the object has no panicking function at all, e.g. from a division the
/// compiler could not prove safe.
#[test]
fn object_has_no_panic_paths() {
    use object::{Object as _, ObjectSymbol as _};
    let bytes = vpcep::dataplane::object();
    let file = object::File::parse(bytes).unwrap();
    let panics: Vec<_> = file
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .filter(|n| n.contains("panic"))
        .collect();
    assert!(
        panics.is_empty(),
        "panicking functions in the object: {panics:?}"
    );
}
