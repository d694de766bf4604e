//! Who reads a service. Its owner and the operator see all of it; anyone else (a consumer
//! it is whitelisted for) sees what connecting needs and nothing of the provider's
//! network: endpoint services expose no server-side information.
use super::{Caller, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The service's project, or the operator acting for any project.
    Owner,
    Consumer,
}

impl Audience {
    pub fn of(caller: &Caller, service: &Service) -> Self {
        if caller.operator || caller.project_id == service.project_id {
            Self::Owner
        } else {
            Self::Consumer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_operator_see_all_others_consume() {
        let s: Service = serde_json::from_value(serde_json::json!({
            "id": "s", "project_id": "p", "domain_id": "d", "port_id": "n", "vpc_id": "v",
            "service_name": "x", "server_type": "VM", "service_type": "interface",
            "approval_enabled": true, "status": "available", "ip": "10.0.0.5", "ports": [],
            "tcp_proxy": "close", "tags": [], "description": "", "enable_policy": false,
            "ip_version": "ipv4", "created_at": "", "updated_at": "",
            "created_rev": 1, "updated_rev": 1,
        }))
        .unwrap();
        let caller = |project: &str, operator| Caller {
            project_id: project.to_owned(),
            domain_id: "d".to_owned(),
            operator,
        };
        assert_eq!(Audience::of(&caller("p", false), &s), Audience::Owner);
        assert_eq!(Audience::of(&caller("q", true), &s), Audience::Owner);
        // Same domain, another project: still a consumer.
        assert_eq!(Audience::of(&caller("q", false), &s), Audience::Consumer);
    }
}
