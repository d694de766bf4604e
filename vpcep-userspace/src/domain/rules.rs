//! Field rules: ids, names, descriptions, tags, port mappings, limits, permission strings,
//! and who may use a service (`permits`).
use serde::{Deserialize, Serialize};

use super::{
    cidr::parse_cidr,
    error::{Error, Result},
    records::{Permission, PortMapping, PortMappingIn, Service, Tag},
};

/// `YYYY-MM-DDTHH:MM:SSZ`, as the reference documents timestamps.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A UUID in its hyphenated form (the one ids are given and served in), lower-cased.
fn hyphenated(id: &str) -> Option<String> {
    if id.len() != 36 {
        return None;
    }
    uuid::Uuid::parse_str(id)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// Parses a path or body id; anything but a UUID is "not found".
pub fn parse_id(id: &str, what: &str) -> Result<String> {
    hyphenated(id).ok_or_else(|| Error::not_found(what))
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A body field that must hold a UUID (400 naming the field otherwise).
pub fn field_uuid(field: &str, v: &str) -> Result<String> {
    hyphenated(v).ok_or_else(|| Error::invalid(field, "must be a UUID"))
}

/// Largest `max_connections`: a node's conntrack table holds this many flows.
pub const MAX_CONNECTIONS: u32 = vpcep_common::maps::MAX_FLOWS;
/// Largest `max_new_connections_per_second`.
pub const MAX_NEW_CONNECTIONS_PER_SECOND: u32 = 1_000_000;

/// A connection limit of a request: an integer from 0 (no limit) to `max`.
pub fn check_limit(field: &str, v: Option<i64>, max: u32) -> Result<Option<u32>> {
    match v {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| {
                Error::invalid(
                    field,
                    format!("must be an integer from 0 (no limit) to {max}"),
                )
            }),
    }
}

pub fn required<T>(field: &str, v: Option<T>) -> Result<T> {
    v.ok_or_else(|| Error::invalid(field, "is required"))
}

/// service_name: ≤16 of letters, digits, `_` and `-`.
pub fn check_service_name(v: &str) -> Result<()> {
    if v.is_empty()
        || v.chars().count() > 16
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::invalid(
            "service_name",
            "must be 1-16 letters, digits, '_' or '-'",
        ));
    }
    Ok(())
}

/// Descriptions: ≤512 characters, no `<` or `>`.
pub fn check_description(field: &str, v: &str) -> Result<()> {
    if v.chars().count() > 512 || v.contains(['<', '>']) {
        return Err(Error::invalid(
            field,
            "must be at most 512 characters without '<' or '>'",
        ));
    }
    Ok(())
}

pub const MAX_TAGS: usize = 20;
const TAG_FORBIDDEN: [char; 8] = ['=', '*', '<', '>', '\\', ',', '|', '/'];

/// The tag rule this product enforces: key 1–36, value ≤43, neither containing
/// `= * < > \ , | /` nor starting or ending with a space.
pub fn check_tag(field: &str, t: &Tag) -> Result<()> {
    let k = &t.key;
    if k.is_empty() || k.chars().count() > 36 {
        return Err(Error::invalid(
            format!("{field}.key"),
            "must be 1-36 characters",
        ));
    }
    if k.contains(TAG_FORBIDDEN) || k.starts_with(' ') || k.ends_with(' ') {
        return Err(Error::invalid(
            format!("{field}.key"),
            "must not contain = * < > \\ , | / nor start or end with a space",
        ));
    }
    let v = &t.value;
    if v.chars().count() > 43 {
        return Err(Error::invalid(
            format!("{field}.value"),
            "must be at most 43 characters",
        ));
    }
    if v.contains(TAG_FORBIDDEN) || v.starts_with(' ') || v.ends_with(' ') {
        return Err(Error::invalid(
            format!("{field}.value"),
            "must not contain = * < > \\ , | / nor start or end with a space",
        ));
    }
    Ok(())
}

/// Validates a full tag list (≤20, unique keys).
pub fn check_tags(tags: &[Tag]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid("tags", "at most 20 tags per resource"));
    }
    for (i, t) in tags.iter().enumerate() {
        check_tag(&format!("tags[{i}]"), t)?;
        if tags[..i].iter().any(|o| o.key == t.key) {
            return Err(Error::invalid(format!("tags[{i}].key"), "duplicate key"));
        }
    }
    Ok(())
}

pub const MAX_PORT_MAPPINGS: usize = 200;

/// Port mappings: 1–65535, TCP or UDP, no duplicates, ≤200.
pub fn check_ports(ports: Vec<PortMappingIn>) -> Result<Vec<PortMapping>> {
    if ports.is_empty() {
        return Err(Error::invalid("ports", "at least one mapping is required"));
    }
    if ports.len() > MAX_PORT_MAPPINGS {
        return Err(Error::invalid("ports", "at most 200 mappings per request"));
    }
    let mut out: Vec<PortMapping> = Vec::with_capacity(ports.len());
    for (i, p) in ports.into_iter().enumerate() {
        let port = |name: &str, v: Option<i64>| -> Result<u16> {
            let f = format!("ports[{i}].{name}");
            let v = v.ok_or_else(|| Error::invalid(&f, "is required"))?;
            u16::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| Error::invalid(&f, "must be 1-65535"))
        };
        let client_port = port("client_port", p.client_port)?;
        let server_port = port("server_port", p.server_port)?;
        let protocol = p.protocol.unwrap_or_else(|| "TCP".to_owned());
        if !PROTOCOLS.contains(&protocol.as_str()) {
            return Err(Error::invalid(
                format!("ports[{i}].protocol"),
                "must be TCP or UDP",
            ));
        }
        let m = PortMapping {
            client_port,
            server_port,
            protocol,
        };
        if out
            .iter()
            .any(|o| o.protocol == m.protocol && o.client_port == m.client_port)
        {
            return Err(Error::invalid(
                format!("ports[{i}]"),
                "duplicate client_port for this protocol in the service",
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// A client or server port of `mine` already used, per protocol, by a sibling service on the
/// same backend port.
pub fn port_clash(mine: &[PortMapping], sibling: &[PortMapping]) -> Option<String> {
    for m in mine {
        for s in sibling {
            if m.protocol != s.protocol {
                continue;
            }
            if m.client_port == s.client_port {
                return Some(format!("client_port {} ({})", m.client_port, m.protocol));
            }
            if m.server_port == s.server_port {
                return Some(format!("server_port {} ({})", m.server_port, m.protocol));
            }
        }
    }
    None
}

pub fn check_enum(field: &str, v: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ))
    }
}

/// Permission strings: `*`, `iam:domain::<[A-Za-z0-9*_-]{1,64}>`,
/// `organizations:orgPath::<path ≤1024>`. Returns the permission type.
pub fn check_permission(field: &str, p: &str) -> Result<&'static str> {
    if p == "*" {
        return Ok("domainId");
    }
    if let Some(d) = p.strip_prefix("iam:domain::")
        && !d.is_empty()
        && d.len() <= 64
        // Beyond the reference's [A-Za-z0-9*]: `-` and `_` too, because a domain defaults
        // to the project id and project ids may contain them.
        && d
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '-' | '_'))
    {
        return Ok("domainId");
    }
    if let Some(o) = p.strip_prefix("organizations:orgPath::")
        && !o.is_empty()
        && o.chars().count() <= 1024
        && !o.contains(['<', '>'])
    {
        return Ok("orgPath");
    }
    Err(Error::invalid(
        field,
        "must be '*', 'iam:domain::<domain_id>' or 'organizations:orgPath::<path>'",
    ))
}

/// Whether a consumer domain may see and connect to a service with these permissions.
pub fn permitted(service: &Service, perms: &[Permission], project: &str, domain: &str) -> bool {
    permits(
        &service.project_id,
        &service.service_type,
        perms.iter().map(|p| p.permission.as_str()),
        project,
        domain,
    )
}

/// [`permitted`] on just the fields it reads (the agent keeps only those): the service's
/// owner project and type, and its permission strings.
pub fn permits<'a>(
    owner: &str,
    service_type: &str,
    permissions: impl IntoIterator<Item = &'a str>,
    project: &str,
    domain: &str,
) -> bool {
    if owner == project || service_type == "gateway" {
        return true;
    }
    let mine = format!("iam:domain::{domain}");
    permissions
        .into_iter()
        .any(|p| p == "*" || p == "iam:domain::*" || p == mine)
}

/// The rules above as the JSON Schema patterns `/openapi.json` states (unit tests check
/// each against its rule, so the document and the server agree).
pub mod pattern {
    /// [`super::field_uuid`] and [`super::parse_id`]: the hyphenated form.
    pub const UUID: &str =
        "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";
    /// [`super::check_service_name`].
    pub const SERVICE_NAME: &str = "^[A-Za-z0-9_-]{1,16}$";
    /// [`super::check_description`] (with `maxLength` 512).
    pub const DESCRIPTION: &str = "^[^<>]*$";
    /// [`super::check_tag`]'s key (with `maxLength` 36).
    pub const TAG_KEY: &str = r"^[^=*<>\\,|/ ](?:[^=*<>\\,|/]*[^=*<>\\,|/ ])?$";
    /// [`super::check_tag`]'s value (with `maxLength` 43).
    pub const TAG_VALUE: &str = r"^(?:[^=*<>\\,|/ ](?:[^=*<>\\,|/]*[^=*<>\\,|/ ])?)?$";
    /// [`super::check_permission`].
    pub const PERMISSION: &str =
        r"^(?:\*|iam:domain::[A-Za-z0-9*_-]{1,64}|organizations:orgPath::[^<>]{1,1024})$";
    /// [`crate::domain::parse_cidr`]: an address, or an address and a prefix length.
    pub const CIDR_OR_ADDRESS: &str = concat!(
        r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}",
        r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:/(?:3[0-2]|[12]?[0-9]))?$"
    );
    /// A VPC or subnet CIDR: a prefix length of at most 30.
    pub const NETWORK_CIDR: &str = concat!(
        r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}",
        r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/(?:30|[12]?[0-9])$"
    );
    /// [`super::check_mac`].
    pub const MAC: &str = "^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$";
    /// A list limit of 0-1000 given as a string.
    pub const LIMIT: &str = "^(?:1000|[1-9]?[0-9]{1,2})$";
    /// A list offset given as a string.
    pub const OFFSET: &str = "^[0-9]{1,15}$";
    /// [`super::check_node_name`].
    pub const NODE_NAME: &str = "^[A-Za-z0-9._-]{1,64}$";

    /// The values of an optional enum field: its strings or null (as absent).
    pub fn or_null(values: &[&'static str]) -> Vec<Option<&'static str>> {
        values.iter().copied().map(Some).chain([None]).collect()
    }
}

/// The SDK's four values plus `proxy_vni`, which the product documentation also lists.
pub const TCP_PROXY: [&str; 5] = ["close", "toa_open", "proxy_open", "open", "proxy_vni"];
pub const SERVER_TYPES: [&str; 3] = ["VM", "LB", "VIP"];
/// Where a PROXY header goes (extension): on the ACK completing the handshake (default:
/// also right for protocols where the server speaks first), or before the first data.
pub const PROXY_HEADER_PLACEMENTS: [&str; 2] = ["on_first_ack", "on_first_data"];
pub const SERVICE_TYPES: [&str; 2] = ["interface", "gateway"];
pub const PROTOCOLS: [&str; 2] = ["TCP", "UDP"];
pub const IP_VERSIONS: [&str; 1] = ["ipv4"];
pub const PERMISSION_TYPES: [&str; 2] = ["domainId", "orgPath"];
pub const POLICY_EFFECTS: [&str; 2] = ["Allow", "Deny"];
/// At most this many services may share one backend resource.
pub const MAX_SERVICES_PER_BACKEND: usize = 5;
/// Whitelist entries per service.
pub const MAX_PERMISSIONS: usize = 1000;
/// Source whitelist entries per endpoint.
pub const MAX_WHITELIST: usize = 20;
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Largest per-project quota override.
pub const MAX_QUOTA: i64 = 100_000;
/// Largest API request rate (per second) or burst, configured or per project.
pub const MAX_API_RATE: u32 = 1_000_000;

/// The two limit extension fields of a request.
pub fn check_limits(conns: Option<i64>, rate: Option<i64>) -> Result<(Option<u32>, Option<u32>)> {
    Ok((
        check_limit("max_connections", conns, MAX_CONNECTIONS)?,
        check_limit(
            "max_new_connections_per_second",
            rate,
            MAX_NEW_CONNECTIONS_PER_SECOND,
        )?,
    ))
}

/// A service's full name: `<region>.<name>.<id>` (or `<region>.<id>` without a name).
pub fn full_name(region: &str, name: Option<&str>, id: &str) -> String {
    match name {
        Some(n) => format!("{region}.{n}.{id}"),
        None => format!("{region}.{id}"),
    }
}

/// An endpoint's source whitelist: ≤20 IPv4 addresses or CIDRs.
pub fn check_whitelist(list: &[String]) -> Result<()> {
    if list.len() > MAX_WHITELIST {
        return Err(Error::invalid(
            "whitelist",
            format!("at most {MAX_WHITELIST} entries"),
        ));
    }
    for (i, w) in list.iter().enumerate() {
        if parse_cidr(w).is_none() {
            return Err(Error::invalid(
                format!("whitelist[{i}]"),
                "must be an IPv4 address or CIDR",
            ));
        }
    }
    Ok(())
}

/// One statement of an endpoint policy.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
pub struct PolicyStatement {
    #[serde(rename = "Effect")]
    #[schemars(extend("enum" = POLICY_EFFECTS))]
    effect: String,
    #[serde(rename = "Action")]
    #[schemars(length(min = 1))]
    action: Vec<String>,
    #[serde(rename = "Resource")]
    #[schemars(length(min = 1))]
    resource: Vec<String>,
    #[serde(rename = "Condition", default, skip_serializing_if = "Option::is_none")]
    condition: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "Sid", default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

pub fn check_policy(p: &[PolicyStatement]) -> Result<()> {
    for (i, s) in p.iter().enumerate() {
        check_enum(
            &format!("policy_statement[{i}].Effect"),
            &s.effect,
            &POLICY_EFFECTS,
        )?;
        if s.action.is_empty() {
            return Err(Error::invalid(
                format!("policy_statement[{i}].Action"),
                "must not be empty",
            ));
        }
        if s.resource.is_empty() {
            return Err(Error::invalid(
                format!("policy_statement[{i}].Resource"),
                "must not be empty",
            ));
        }
    }
    Ok(())
}

pub fn check_routetables(r: &[String]) -> Result<Vec<String>> {
    r.iter()
        .enumerate()
        .map(|(i, id)| field_uuid(&format!("routetables[{i}]"), id))
        .collect()
}

/// The `permission_type` of a request, if given, is one of the types.
pub fn check_permission_type_given(given: Option<&str>) -> Result<()> {
    match given {
        Some(t) => check_enum("permission_type", t, &PERMISSION_TYPES),
        None => Ok(()),
    }
}

/// The `permission_type` of a request, if given, must match what the permission string is.
/// The value itself is checked once per request, by [`check_permission_type_given`].
pub fn check_permission_type(field: &str, given: Option<&str>, actual: &str) -> Result<()> {
    match given {
        Some(t) if t != actual => Err(Error::invalid(
            field,
            format!("does not match permission_type {t}"),
        )),
        _ => Ok(()),
    }
}

/// A MAC `xx:xx:xx:xx:xx:xx`, lower-cased.
pub fn check_mac(m: &str) -> Result<String> {
    let parts: Vec<&str> = m.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(m.to_ascii_lowercase())
    } else {
        Err(Error::invalid("mac", "must be xx:xx:xx:xx:xx:xx"))
    }
}

pub fn check_node_name(n: &str) -> Result<()> {
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(Error::invalid(
            "name",
            "must be 1-64 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_rules() {
        let t = |k: &str, v: &str| {
            check_tag(
                "t",
                &Tag {
                    key: k.into(),
                    value: v.into(),
                },
            )
        };
        assert!(t("env", "prod").is_ok());
        assert!(t("", "x").is_err());
        assert!(t(&"k".repeat(37), "").is_err());
        assert!(t("a=b", "").is_err());
        assert!(t("k", &"v".repeat(44)).is_err());
        assert!(t(" k", "").is_err());
        assert!(t("k", "a/b").is_err());
    }
}
