//! The agent's pinned maps, read as an outsider would.
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use vpcep_common::{
    endpoint::{Endpoint, EndpointKey, PortKey, PortTarget, Service},
    maps,
};

fn pinned(pin_dir: &Path, name: &str) -> MapData {
    MapData::from_pin(pin_dir.join(name)).unwrap()
}

/// The agent's pinned `ENDPOINTS` map, read as an outsider would.
pub fn endpoints(pin_dir: &Path) -> Vec<(EndpointKey, Endpoint)> {
    let m: HashMap<MapData, EndpointKey, Endpoint> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::ENDPOINTS))).unwrap();
    m.iter().map(Result::unwrap).collect()
}

pub fn remove_endpoint(pin_dir: &Path, key: &EndpointKey) {
    let mut m: HashMap<MapData, EndpointKey, Endpoint> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::ENDPOINTS))).unwrap();
    m.remove(key).unwrap();
}

pub fn services(pin_dir: &Path) -> Vec<(u32, Service)> {
    let m: HashMap<MapData, u32, Service> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::SERVICES))).unwrap();
    m.iter().map(Result::unwrap).collect()
}

pub fn ports(pin_dir: &Path) -> Vec<(PortKey, PortTarget)> {
    let m: HashMap<MapData, PortKey, PortTarget> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::PORT_MAP))).unwrap();
    m.iter().map(Result::unwrap).collect()
}

/// Entries in the forward and reverse conntrack maps.
pub fn conntrack_len(pin_dir: &Path) -> (usize, usize) {
    use vpcep_common::endpoint::{FlowEntry, FlowKey, RevEntry, RevKey};
    let f: HashMap<MapData, FlowKey, FlowEntry> =
        HashMap::try_from(Map::LruHashMap(pinned(pin_dir, maps::CT_FWD))).unwrap();
    let r: HashMap<MapData, RevKey, RevEntry> =
        HashMap::try_from(Map::LruHashMap(pinned(pin_dir, maps::CT_REV))).unwrap();
    (f.keys().count(), r.keys().count())
}

/// The agent's pinned `SNAT_OWNERS` map.
pub fn snat_owners(pin_dir: &Path) -> Vec<(u32, u32)> {
    let m: HashMap<MapData, u32, u32> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, maps::SNAT_OWNERS))).unwrap();
    m.iter().map(Result::unwrap).collect()
}
