//! Pure: the feed → the names the node resolver answers, and the answer to one query.
use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, RData, Record, RecordType, rdata::A},
};

use crate::agent::{config::NicConfig, desired::FeedState};

/// The largest UDP answer the resolver offers in its EDNS option (RFC 9715's default).
pub const EDNS_PAYLOAD: u16 = 1232;

/// A local VM NIC the resolver listens on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnsNic {
    /// Host-side interface: its queries are this NIC's, so they carry its VPC.
    pub iface: String,
    pub vpc_id: String,
    pub vni: u32,
    /// The subnet's DNS address.
    pub address: Ipv4Addr,
}

/// What the resolver knows at one revision of the feed.
#[derive(Debug, Default)]
pub struct DnsView {
    /// Name (lower case, no final dot) → (VNI, address) in each VPC that has it. One map
    /// for all VPCs: a name that another VPC has is NXDOMAIN without a second lookup.
    names: HashMap<Box<str>, Box<[(u32, Ipv4Addr)]>>,
    /// The zones of the endpoint-id names (".vpcep.region.internal"): a name under one
    /// that the asking VPC lacks is NXDOMAIN, not forwarded.
    zones: Vec<Box<str>>,
    pub nics: Vec<DnsNic>,
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>, Verdict),
    /// Not a name of ours: to the upstreams.
    Forward,
    /// Not worth an answer: shorter than a header, or a response.
    Drop,
}

/// How a local reply counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    NxDomain,
    /// Did not parse (FORMERR) or not a standard query (NOTIMP).
    Malformed,
}

impl DnsView {
    /// The names of every VPC and the NICs of this node (those the inventory knows).
    pub fn build(state: &FeedState, nics: &[NicConfig]) -> Self {
        let mut names: HashMap<Box<str>, Vec<(u32, Ipv4Addr)>> = HashMap::new();
        let mut zones = BTreeSet::new();
        for (vni, id, name, ip) in state.dns_records() {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(zone) = name.strip_prefix(id).filter(|z| z.starts_with('.')) {
                zones.insert(zone.to_owned());
            }
            let at = names.entry(name.into_boxed_str()).or_default();
            if !at.contains(&(vni, ip)) {
                at.push((vni, ip));
            }
        }
        let nics = nics
            .iter()
            .filter_map(|n| {
                let (vpc_id, vni, address) = state.nic_dns(&n.port_id)?;
                Some(DnsNic {
                    iface: n.iface.clone(),
                    vpc_id: vpc_id.to_owned(),
                    vni,
                    address,
                })
            })
            .collect();
        Self::from_parts(names, zones.into_iter().collect(), nics)
    }

    fn from_parts(
        names: HashMap<Box<str>, Vec<(u32, Ipv4Addr)>>,
        zones: Vec<String>,
        nics: Vec<DnsNic>,
    ) -> Self {
        let mut names: HashMap<_, _> = names
            .into_iter()
            .map(|(k, v)| (k, v.into_boxed_slice()))
            .collect();
        names.shrink_to_fit();
        Self {
            names,
            zones: zones.into_iter().map(String::into_boxed_str).collect(),
            nics,
        }
    }

    /// Names known in any VPC.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn in_zone(&self, name: &str) -> bool {
        self.zones
            .iter()
            .any(|z| name.ends_with(&**z) || name == &z[1..])
    }

    /// The answer to `query` asked from a NIC of VPC `vni`. Over UDP an answer larger
    /// than the asker's limit (512 bytes, or its EDNS size) is cut to the header and the
    /// question, with TC set, so that it asks again over TCP.
    pub fn answer(&self, vni: u32, query: &[u8], udp: bool, ttl: u32) -> Outcome {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return Outcome::Drop;
        }
        let id = u16::from_be_bytes([query[0], query[1]]);
        let Ok(msg) = Message::from_vec(query) else {
            return error(id, ResponseCode::FormErr);
        };
        if msg.message_type() != MessageType::Query {
            return Outcome::Drop;
        }
        if msg.op_code() != OpCode::Query {
            return error(id, ResponseCode::NotImp);
        }
        let [q] = msg.queries() else {
            return error(id, ResponseCode::FormErr);
        };
        let ascii = q.name().to_lowercase().to_ascii();
        let name = ascii.trim_end_matches('.');
        let (code, ips): (ResponseCode, Vec<Ipv4Addr>) = match self.names.get(name) {
            Some(at) => {
                let ips: Vec<_> = at
                    .iter()
                    .filter(|(v, _)| *v == vni)
                    .map(|(_, ip)| *ip)
                    .collect();
                if ips.is_empty() {
                    (ResponseCode::NXDomain, ips)
                } else if q.query_class() == DNSClass::IN
                    && matches!(q.query_type(), RecordType::A | RecordType::ANY)
                {
                    (ResponseCode::NoError, ips)
                } else {
                    // The name exists with no record of this type (NODATA).
                    (ResponseCode::NoError, Vec::new())
                }
            }
            None if self.in_zone(name) => (ResponseCode::NXDomain, Vec::new()),
            None => return Outcome::Forward,
        };
        let mut r = Message::new();
        r.set_id(id)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .set_recursion_desired(msg.recursion_desired())
            .set_recursion_available(true)
            .set_response_code(code)
            .add_query(q.clone());
        for ip in ips {
            r.add_answer(Record::from_rdata(q.name().clone(), ttl, RData::A(A(ip))));
        }
        if msg.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            r.set_edns(edns);
        }
        let Ok(mut bytes) = r.to_vec() else {
            return error(id, ResponseCode::ServFail);
        };
        if udp && bytes.len() > usize::from(msg.max_payload()) {
            r.take_answers();
            r.set_truncated(true);
            match r.to_vec() {
                Ok(b) => bytes = b,
                Err(_) => return error(id, ResponseCode::ServFail),
            }
        }
        let verdict = if code == ResponseCode::NXDomain {
            Verdict::NxDomain
        } else {
            Verdict::Answer
        };
        Outcome::Reply(bytes, verdict)
    }
}

/// A header-only answer with `code` (the question did not parse or is not served).
fn error(id: u16, code: ResponseCode) -> Outcome {
    match reply_code(id, code) {
        Some(b) => Outcome::Reply(b, Verdict::Malformed),
        None => Outcome::Drop,
    }
}

/// A header-only response `id` with `code` (SERVFAIL, REFUSED …), if it encodes.
pub fn reply_code(id: u16, code: ResponseCode) -> Option<Vec<u8>> {
    let mut r = Message::new();
    r.set_id(id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_available(true)
        .set_response_code(code);
    r.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use hickory_proto::{op::Query, rr::Name};

    use super::*;

    const VA: u32 = 10;
    const VB: u32 = 20;
    const ZONE: &str = ".vpcep.r1.internal";

    fn view() -> DnsView {
        let mut names: HashMap<Box<str>, Vec<(u32, Ipv4Addr)>> = HashMap::new();
        names.insert(
            "ep1.vpcep.r1.internal".into(),
            vec![(VA, [10, 0, 0, 100].into())],
        );
        names.insert(
            "api.example.internal".into(),
            vec![(VB, [10, 0, 0, 7].into())],
        );
        // 40 addresses: more than 512 bytes of answer.
        names.insert(
            "many.vpcep.r1.internal".into(),
            (1..=40).map(|i| (VA, Ipv4Addr::new(10, 0, 1, i))).collect(),
        );
        DnsView::from_parts(names, vec![ZONE.to_owned()], Vec::new())
    }

    fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn reply(o: Outcome) -> (Message, Verdict) {
        match o {
            Outcome::Reply(b, v) => (Message::from_vec(&b).unwrap(), v),
            o => panic!("no reply: {o:?}"),
        }
    }

    #[test]
    fn own_names_answer_and_others_are_nxdomain() {
        let v = view();
        let (m, verdict) = reply(v.answer(
            VA,
            &query("EP1.vpcep.r1.internal.", RecordType::A, false),
            true,
            5,
        ));
        assert_eq!(verdict, Verdict::Answer);
        assert_eq!(m.id(), 4242);
        assert!(m.authoritative() && m.recursion_desired());
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].ttl(), 5);
        assert_eq!(m.answers()[0].data(), &RData::A(A::new(10, 0, 0, 100)));
        // The provider's name is VPC B's; for VPC A it does not exist.
        let (m, verdict) = reply(v.answer(
            VA,
            &query("api.example.internal.", RecordType::A, false),
            true,
            5,
        ));
        assert_eq!(
            (m.response_code(), verdict),
            (ResponseCode::NXDomain, Verdict::NxDomain)
        );
        let (m, _) = reply(v.answer(
            VB,
            &query("ep1.vpcep.r1.internal.", RecordType::A, false),
            true,
            5,
        ));
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        // Under the zone but nobody's: NXDOMAIN, not forwarded.
        let (m, _) = reply(v.answer(
            VA,
            &query("nope.vpcep.r1.internal.", RecordType::A, false),
            true,
            5,
        ));
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        // AAAA of an own name: NODATA.
        let (m, _) = reply(v.answer(
            VA,
            &query("ep1.vpcep.r1.internal.", RecordType::AAAA, false),
            true,
            5,
        ));
        assert_eq!(
            (m.response_code(), m.answers().len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(
            v.answer(VA, &query("example.org.", RecordType::A, false), true, 5),
            Outcome::Forward
        );
    }

    #[test]
    fn large_answers_set_tc_over_udp_only() {
        let v = view();
        let q = query("many.vpcep.r1.internal.", RecordType::A, false);
        let (m, _) = reply(v.answer(VA, &q, true, 5));
        assert!(m.truncated());
        assert!(m.answers().is_empty());
        assert_eq!(m.queries().len(), 1);
        let (m, _) = reply(v.answer(VA, &q, false, 5));
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 40);
        // With EDNS 4096 the whole answer fits in UDP.
        let q = query("many.vpcep.r1.internal.", RecordType::A, true);
        let (m, _) = reply(v.answer(VA, &q, true, 5));
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 40);
        assert_eq!(
            m.extensions().as_ref().map(Edns::max_payload),
            Some(EDNS_PAYLOAD)
        );
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let v = view();
        assert_eq!(v.answer(VA, &[1, 2, 3], true, 5), Outcome::Drop);
        // A response is never answered (no loops between resolvers).
        let mut resp = query("ep1.vpcep.r1.internal.", RecordType::A, false);
        resp[2] |= 0x80;
        assert_eq!(v.answer(VA, &resp, true, 5), Outcome::Drop);
        // A header claiming a question that is not there.
        let mut bad = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        bad.extend_from_slice(&[63]);
        let (m, verdict) = reply(v.answer(VA, &bad, true, 5));
        assert_eq!(
            (m.id(), m.response_code(), verdict),
            (0xabcd, ResponseCode::FormErr, Verdict::Malformed)
        );
        // Two questions.
        let mut m = Message::new();
        m.set_id(7);
        for n in ["a.example.", "b.example."] {
            m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
        }
        let (r, _) = reply(v.answer(VA, &m.to_vec().unwrap(), true, 5));
        assert_eq!(r.response_code(), ResponseCode::FormErr);
        // Not a standard query.
        let mut m = Message::new();
        m.set_id(8).set_op_code(OpCode::Status);
        let (r, _) = reply(v.answer(VA, &m.to_vec().unwrap(), true, 5));
        assert_eq!(r.response_code(), ResponseCode::NotImp);
    }
}
