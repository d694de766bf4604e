//! The API's JSON views of the stored records (the reference API's field set: stored
//! fields plus the constant ones this product does not vary).
use serde_json::{Value, json};

use crate::domain::{Endpoint, EndpointStatus, Permission, Service};

impl Service {
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "port_id": self.port_id,
            "service_name": self.service_name,
            "server_type": self.server_type,
            "vpc_id": self.vpc_id,
            "pool_id": "",
            "approval_enabled": self.approval_enabled,
            "status": self.status,
            "service_type": self.service_type,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "project_id": self.project_id,
            "domain_id": self.domain_id,
            "ip": self.ip,
            "ports": self.ports,
            "tcp_proxy": self.tcp_proxy,
            "tags": self.tags,
            "description": self.description,
            "enable_policy": self.enable_policy,
            "ip_version": self.ip_version,
            "max_connections": self.max_connections.unwrap_or(0),
            "max_new_connections_per_second": self.max_new_connections_per_second.unwrap_or(0),
            "supported_editions": ["Professional"],
            "cidr_type": "private",
            "public_border_group": "center",
            "error": [],
        })
    }
}

impl Endpoint {
    pub fn view(&self) -> Value {
        let active = if self.status == EndpointStatus::Accepted {
            vec!["active"]
        } else {
            vec![]
        };
        let mut v = self.base_view(active);
        // Only when the consumer set them: otherwise the service's apply.
        for (k, val) in [
            ("max_connections", self.max_connections),
            (
                "max_new_connections_per_second",
                self.max_new_connections_per_second,
            ),
        ] {
            if let Some(n) = val {
                v[k] = json!(n);
            }
        }
        v
    }

    fn base_view(&self, active: Vec<&str>) -> Value {
        json!({
            "id": self.id,
            "service_type": self.service_type,
            "status": self.status,
            "active_status": active,
            "enable_status": "enable",
            "specification_name": "default",
            "endpoint_service_name": self.service_name,
            "marker_id": self.marker_id,
            "endpoint_service_id": self.service_id,
            "enable_dns": self.enable_dns,
            "dns_names": self.dns_names,
            "ip": self.ip,
            "vpc_id": self.vpc_id,
            "subnet_id": self.subnet_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "project_id": self.project_id,
            "tags": self.tags,
            "error": [],
            "whitelist": self.whitelist,
            "enable_whitelist": self.enable_whitelist,
            "routetables": self.routetables,
            "description": self.description,
            "policy_statement": self.policy_statement,
            "policy_document": self.policy_document,
            "endpoint_pool_id": "",
            "public_border_group": "center",
            "ipv6_address": Value::Null,
        })
    }

    pub fn connection_view(&self) -> Value {
        json!({
            "id": self.id,
            "marker_id": self.marker_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "domain_id": self.domain_id,
            "project_id": self.project_id,
            "status": self.status,
            "description": self.connection_description,
            "error": [],
        })
    }
}

impl Permission {
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "permission": self.permission,
            "permission_type": self.permission_type,
            "description": self.description,
            "created_at": self.created_at,
        })
    }
}
