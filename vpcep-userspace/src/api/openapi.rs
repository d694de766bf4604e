//! `/openapi.json`, built from the operation table below (the same table the tests walk to
//! check that every documented operation is routed).
use axum::Json;
use schemars::{Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

/// (method, path, operationId, summary, has request body)
pub const OPERATIONS: &[(&str, &str, &str, &str, bool)] = &[
    ("get", "/", "list_version_details", "API versions", false),
    (
        "get",
        "/{version}",
        "list_specified_version_details",
        "One API version",
        false,
    ),
    (
        "get",
        "/v1/{project_id}/quotas",
        "list_quota_details",
        "Quotas and usage",
        false,
    ),
    (
        "get",
        "/v1/{project_id}/vpc-endpoint-services",
        "list_endpoint_service",
        "List endpoint services",
        false,
    ),
    (
        "post",
        "/v1/{project_id}/vpc-endpoint-services",
        "create_endpoint_service",
        "Create an endpoint service",
        true,
    ),
    (
        "get",
        "/v1/{project_id}/vpc-endpoint-services/describe",
        "list_service_describe_details",
        "Describe a service by name or id",
        false,
    ),
    (
        "get",
        "/v1/{project_id}/vpc-endpoint-services/public",
        "list_service_public_details",
        "Services usable by the caller",
        false,
    ),
    (
        "delete",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}",
        "delete_endpoint_service",
        "Delete an endpoint service",
        false,
    ),
    (
        "get",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}",
        "list_service_details",
        "Show an endpoint service",
        false,
    ),
    (
        "put",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}",
        "update_endpoint_service",
        "Update an endpoint service",
        true,
    ),
    (
        "get",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/connections",
        "list_service_connections",
        "List connections",
        false,
    ),
    (
        "post",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/connections/action",
        "accept_or_reject_endpoint",
        "Accept (receive) or reject connections",
        true,
    ),
    (
        "put",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/connections/description",
        "update_endpoint_connections_desc",
        "Describe connections",
        true,
    ),
    (
        "put",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/name",
        "update_endpoint_service_name",
        "Rename an endpoint service",
        true,
    ),
    (
        "get",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/permissions",
        "list_service_permissions_details",
        "List whitelist entries",
        false,
    ),
    (
        "post",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/permissions/action",
        "add_or_remove_service_permissions",
        "Add or remove whitelist entries",
        true,
    ),
    (
        "post",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/permissions/batch-create",
        "batch_add_endpoint_service_permissions",
        "Add whitelist entries with descriptions",
        true,
    ),
    (
        "post",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/permissions/batch-delete",
        "batch_remove_endpoint_service_permissions",
        "Remove whitelist entries by id",
        true,
    ),
    (
        "put",
        "/v1/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/permissions/{permission_id}",
        "update_endpoint_service_permission_desc",
        "Describe a whitelist entry",
        true,
    ),
    (
        "get",
        "/v1/{project_id}/vpc-endpoints",
        "list_endpoints",
        "List endpoints",
        false,
    ),
    (
        "post",
        "/v1/{project_id}/vpc-endpoints",
        "create_endpoint",
        "Create an endpoint",
        true,
    ),
    (
        "delete",
        "/v1/{project_id}/vpc-endpoints/{vpc_endpoint_id}",
        "delete_endpoint",
        "Delete an endpoint",
        false,
    ),
    (
        "get",
        "/v1/{project_id}/vpc-endpoints/{vpc_endpoint_id}",
        "list_endpoint_info_details",
        "Show an endpoint",
        false,
    ),
    (
        "put",
        "/v1/{project_id}/vpc-endpoints/{vpc_endpoint_id}",
        "update_endpoint_white",
        "Update the endpoint's source whitelist",
        true,
    ),
    (
        "delete",
        "/v1/{project_id}/vpc-endpoints/{vpc_endpoint_id}/policy",
        "delete_endpoint_policy",
        "Delete the endpoint policy",
        false,
    ),
    (
        "put",
        "/v1/{project_id}/vpc-endpoints/{vpc_endpoint_id}/policy",
        "update_endpoint_policy",
        "Set the endpoint policy",
        true,
    ),
    (
        "put",
        "/v1/{project_id}/vpc-endpoints/{vpc_endpoint_id}/routetables",
        "update_endpoint_routetable",
        "Set route tables",
        true,
    ),
    (
        "post",
        "/v1/{project_id}/{resource_type}/resource_instances/action",
        "list_resource_instances",
        "Filter or count resources by tag",
        true,
    ),
    (
        "get",
        "/v1/{project_id}/{resource_type}/tags",
        "list_query_project_resource_tags",
        "The project's tags",
        false,
    ),
    (
        "post",
        "/v1/{project_id}/{resource_type}/{resource_id}/tags/action",
        "batch_add_or_remove_resource_instance",
        "Add or remove tags",
        true,
    ),
    (
        "post",
        "/v2/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/add-server-resources",
        "add_endpoint_service_server_resource",
        "Add server resources",
        true,
    ),
    (
        "post",
        "/v2/{project_id}/vpc-endpoint-services/{vpc_endpoint_service_id}/upgrade",
        "upgrade_endpoint_service",
        "Upgrade an endpoint service",
        false,
    ),
    (
        "post",
        "/v2/{project_id}/vpc-endpoints/{vpc_endpoint_id}/upgrade",
        "upgrade_endpoint",
        "Upgrade an endpoint",
        true,
    ),
    (
        "get",
        "/inventory/vpcs",
        "inventory_list_vpcs",
        "List VPCs",
        false,
    ),
    (
        "post",
        "/inventory/vpcs",
        "inventory_create_vpc",
        "Create a VPC (VNI allocated)",
        true,
    ),
    (
        "get",
        "/inventory/vpcs/{id}",
        "inventory_show_vpc",
        "Show a VPC",
        false,
    ),
    (
        "delete",
        "/inventory/vpcs/{id}",
        "inventory_delete_vpc",
        "Delete an unreferenced VPC",
        false,
    ),
    (
        "get",
        "/inventory/subnets",
        "inventory_list_subnets",
        "List subnets",
        false,
    ),
    (
        "post",
        "/inventory/subnets",
        "inventory_create_subnet",
        "Create a subnet",
        true,
    ),
    (
        "get",
        "/inventory/subnets/{id}",
        "inventory_show_subnet",
        "Show a subnet",
        false,
    ),
    (
        "delete",
        "/inventory/subnets/{id}",
        "inventory_delete_subnet",
        "Delete an unused subnet",
        false,
    ),
    (
        "get",
        "/inventory/ports",
        "inventory_list_ports",
        "List NICs",
        false,
    ),
    (
        "post",
        "/inventory/ports",
        "inventory_create_port",
        "Register a NIC",
        true,
    ),
    (
        "get",
        "/inventory/ports/{id}",
        "inventory_show_port",
        "Show a NIC",
        false,
    ),
    (
        "delete",
        "/inventory/ports/{id}",
        "inventory_delete_port",
        "Remove a NIC",
        false,
    ),
    (
        "get",
        "/inventory/nodes",
        "inventory_list_nodes",
        "List nodes with applied revisions",
        false,
    ),
    (
        "get",
        "/inventory/nodes/{name}",
        "inventory_show_node",
        "Show a node",
        false,
    ),
    (
        "put",
        "/inventory/nodes/{name}",
        "inventory_put_node",
        "Register a node (SNAT address allocated)",
        true,
    ),
    (
        "delete",
        "/inventory/nodes/{name}",
        "inventory_delete_node",
        "Remove a node without NICs",
        false,
    ),
    (
        "put",
        "/inventory/nodes/{name}/applied-revision",
        "inventory_put_applied",
        "Report the applied feed revision",
        true,
    ),
    (
        "get",
        "/inventory/public-services",
        "inventory_public_services",
        "Services open to every tenant",
        false,
    ),
    (
        "get",
        "/inventory/quotas/{project_id}",
        "inventory_show_quota",
        "A project's quotas",
        false,
    ),
    (
        "put",
        "/inventory/quotas/{project_id}",
        "inventory_put_quota",
        "Override a project's quotas",
        true,
    ),
    (
        "get",
        "/feed/snapshot",
        "feed_snapshot",
        "All agent-relevant objects at one revision",
        false,
    ),
    (
        "get",
        "/feed/watch",
        "feed_watch",
        "Changes after a revision (NDJSON stream)",
        false,
    ),
    ("get", "/openapi.json", "openapi", "This document", false),
];

/// The request body type of an operation, as a schema reference.
fn request_schema(op: &str, g: &mut SchemaGenerator) -> Option<Schema> {
    use super::{
        endpoints as e, inventory as i, misc as m, permissions as p, services as s, tags as t,
    };
    Some(match op {
        "create_endpoint_service" => g.subschema_for::<s::CreateService>(),
        "update_endpoint_service" => g.subschema_for::<s::UpdateService>(),
        "update_endpoint_service_name" => g.subschema_for::<s::RenameService>(),
        "accept_or_reject_endpoint" => g.subschema_for::<p::ConnectionAction>(),
        "update_endpoint_connections_desc" => g.subschema_for::<p::ConnectionDescs>(),
        "add_or_remove_service_permissions" => g.subschema_for::<p::PermissionAction>(),
        "batch_add_endpoint_service_permissions" => g.subschema_for::<p::BatchCreate>(),
        "batch_remove_endpoint_service_permissions" => g.subschema_for::<p::BatchDelete>(),
        "update_endpoint_service_permission_desc" => g.subschema_for::<p::UpdatePermissionDesc>(),
        "create_endpoint" => g.subschema_for::<e::CreateEndpoint>(),
        "update_endpoint_white" => g.subschema_for::<e::UpdateWhitelist>(),
        "update_endpoint_policy" => g.subschema_for::<e::UpdatePolicy>(),
        "update_endpoint_routetable" => g.subschema_for::<e::UpdateRoutetables>(),
        "list_resource_instances" => g.subschema_for::<t::FilterQuery>(),
        "batch_add_or_remove_resource_instance" => g.subschema_for::<t::TagAction>(),
        "add_endpoint_service_server_resource" => g.subschema_for::<m::AddServerResources>(),
        "upgrade_endpoint" => g.subschema_for::<m::UpgradeEndpoint>(),
        "inventory_create_vpc" => g.subschema_for::<i::CreateVpc>(),
        "inventory_create_subnet" => g.subschema_for::<i::CreateSubnet>(),
        "inventory_create_port" => g.subschema_for::<i::CreatePort>(),
        "inventory_put_node" => g.subschema_for::<i::PutNode>(),
        "inventory_put_applied" => g.subschema_for::<i::Applied>(),
        "inventory_put_quota" => g.subschema_for::<i::PutQuota>(),
        _ => return None,
    })
}

/// The success body of an operation that returns one flat object.
fn response_schema(op: &str, g: &mut SchemaGenerator) -> Option<Schema> {
    use super::model;
    Some(match op {
        "create_endpoint_service" | "list_service_details" | "update_endpoint_service" => {
            g.subschema_for::<model::Service>()
        }
        "create_endpoint"
        | "list_endpoint_info_details"
        | "update_endpoint_white"
        | "update_endpoint_policy"
        | "delete_endpoint_policy" => g.subschema_for::<model::Endpoint>(),
        "inventory_create_vpc" | "inventory_show_vpc" => g.subschema_for::<model::Vpc>(),
        "inventory_create_subnet" | "inventory_show_subnet" => g.subschema_for::<model::Subnet>(),
        "inventory_create_port" | "inventory_show_port" => g.subschema_for::<model::Port>(),
        "inventory_put_node" | "inventory_show_node" => g.subschema_for::<model::Node>(),
        _ => return None,
    })
}

/// The OpenAPI 3.1 document: paths from the operation table, request and response schemas
/// derived from the Rust types the handlers decode and encode.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths: Map<String, Value> = Map::new();
    for (method, path, op, summary, body) in OPERATIONS {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let ok = match response_schema(op, &mut g) {
            Some(schema) => {
                json!({"description": "success", "content": {"application/json": {"schema": schema}}})
            }
            None => json!({"description": "success"}),
        };
        let mut o = json!({
            "operationId": op,
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": ok,
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if *body {
            let schema =
                request_schema(op, &mut g).map_or_else(|| json!({"type": "object"}), |s| json!(s));
            o["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema}},
            });
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = o;
    }
    let mut schemas: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "properties": {"error_code": {"type": "string"}, "error_msg": {"type": "string"}},
            "required": ["error_code", "error_msg"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "vpcep", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "sdkHmac": {"type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<…>, Signature=<hex>"},
                "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
            },
        },
        "security": [{"sdkHmac": []}, {"token": []}],
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}
