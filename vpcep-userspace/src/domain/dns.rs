//! Endpoint domain names: their syntax and how they are derived (docs/api.md, "Internal
//! domain names").

/// A DNS name as given by the operator or a provider: lowercased and without its trailing
/// dot, or why it is not one (RFC 1035 host names: labels of letters, digits and inner
/// hyphens, 1–63 characters, at most 253 in all, at least two labels).
pub fn check_name(s: &str) -> Result<String, String> {
    let n = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 {
        return Err("must be a DNS name of 1 to 253 characters".into());
    }
    let labels: Vec<&str> = n.split('.').collect();
    if labels.len() < 2 {
        return Err("must have at least two labels (such as api.example.internal)".into());
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err("each label must have 1 to 63 characters".into());
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || l.starts_with('-')
            || l.ends_with('-')
        {
            return Err(format!(
                "label {l:?} may hold only letters, digits and inner hyphens"
            ));
        }
    }
    Ok(n)
}

/// Whether `name` is `zone` or inside it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// A service's own name (`<region>.<name>.<id>` without region and id) as one DNS label:
/// lowercased, other characters as hyphens, at most 63; None when it has none.
fn name_label(service_name: &str, region: &str, service_id: &str) -> Option<String> {
    let inner = service_name
        .strip_prefix(&format!("{region}."))?
        .strip_suffix(&format!(".{service_id}"))?;
    let l: String = inner
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let l = l.trim_matches('-');
    let l = &l[..l.len().min(63)];
    let l = l.trim_end_matches('-');
    (!l.is_empty()).then(|| l.to_owned())
}

/// The names of an endpoint whose domain name is on and which is accepted: one from its
/// id, one from its service's name, and the service's private DNS name if it has one.
pub fn endpoint_names(
    zone: &str,
    region: &str,
    endpoint_id: &str,
    service_id: &str,
    service_name: &str,
    private_dns_name: &str,
) -> Vec<String> {
    let mut names = vec![format!("{endpoint_id}.{zone}")];
    names.push(match name_label(service_name, region, service_id) {
        Some(l) => format!("{l}.{service_id}.{zone}"),
        None => format!("{service_id}.{zone}"),
    });
    if !private_dns_name.is_empty() {
        names.push(private_dns_name.to_owned());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_lowercased() {
        assert_eq!(
            check_name("API.Example.internal.").unwrap(),
            "api.example.internal"
        );
        for bad in [
            "", "internal", "a..b", "-a.b", "a-.b", "a_b.c", "a b.c", "é.b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&format!("{}.b", "a".repeat(64))).is_err());
        assert!(check_name(&format!("{}.b", "a".repeat(63))).is_ok());
        assert!(
            check_name(&["a".repeat(63).as_str(); 4].join(".")).is_err(),
            "255 chars"
        );
    }

    #[test]
    fn zone_membership() {
        assert!(in_zone("x.vpcep.r.internal", "vpcep.r.internal"));
        assert!(in_zone("vpcep.r.internal", "vpcep.r.internal"));
        assert!(!in_zone("xvpcep.r.internal", "vpcep.r.internal"));
    }

    #[test]
    fn endpoint_names_from_id_service_and_private_name() {
        let sid = "5f0c1d4e-0a1b-4c2d-8e3f-000000000007";
        let n = endpoint_names(
            "vpcep.local-1.internal",
            "local-1",
            "e1",
            sid,
            &format!("local-1.My_Web.{sid}"),
            "api.example.internal",
        );
        assert_eq!(
            n,
            [
                "e1.vpcep.local-1.internal".to_owned(),
                format!("my-web.{sid}.vpcep.local-1.internal"),
                "api.example.internal".to_owned(),
            ]
        );
        let n = endpoint_names(
            "z.internal",
            "local-1",
            "e1",
            sid,
            &format!("local-1.{sid}"),
            "",
        );
        assert_eq!(n, ["e1.z.internal".to_owned(), format!("{sid}.z.internal")]);
    }
}
