//! `/openapi.json`, built from the route table ([`OPERATIONS`], the same table the router is
//! built from and the tests walk).
use axum::Json;
use schemars::{Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

pub use super::routes::OPERATIONS;

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
    use crate::domain as model;
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
