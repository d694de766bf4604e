//! `/openapi.json` (OpenAPI 3.1), built from the route table ([`OPERATIONS`], the same table
//! the router is built from and the tests walk). Request schemas come from the types the
//! handlers decode (their rules as `required`, `enum`, ranges, lengths, patterns and formats:
//! see [`crate::domain::pattern`]); response schemas from the types they encode
//! ([`super::views`]).
use axum::Json;
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

pub use super::routes::OPERATIONS;
use crate::domain::{Port, Subnet, Vpc, pattern};

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

/// What an operation answers on success.
enum Success {
    /// 200 (or 201 for the inventory's creates) with this JSON body.
    Json(u16, Schema),
    /// 200 with a body of another media type.
    Other(&'static str, Value),
    /// 204, no content.
    NoContent,
}

/// The success answer of an operation: the type its handler serialises.
fn response(op: &str, g: &mut SchemaGenerator) -> Success {
    use super::views as v;
    fn ok<T: JsonSchema>(g: &mut SchemaGenerator) -> Success {
        Success::Json(200, g.subschema_for::<T>())
    }
    match op {
        "list_version_details" => ok::<v::Versions>(g),
        "list_specified_version_details" => ok::<v::OneVersion>(g),
        "list_quota_details" => ok::<v::Quotas>(g),
        "list_endpoint_service" => ok::<v::ServicePage>(g),
        "create_endpoint_service" | "update_endpoint_service" => ok::<v::ServiceView>(g),
        "list_service_details" => ok::<v::ServiceForCaller>(g),
        "list_service_describe_details" => ok::<v::ConsumerServiceView>(g),
        "list_service_public_details" => ok::<v::PublicServicePage>(g),
        "list_service_connections" => ok::<v::ConnectionPage>(g),
        "accept_or_reject_endpoint" | "update_endpoint_connections_desc" => ok::<v::Connections>(g),
        "update_endpoint_service_name" => ok::<v::Renamed>(g),
        "list_service_permissions_details" => ok::<v::PermissionPage>(g),
        "add_or_remove_service_permissions" => ok::<v::PermissionStrings>(g),
        "batch_add_endpoint_service_permissions"
        | "batch_remove_endpoint_service_permissions"
        | "update_endpoint_service_permission_desc" => ok::<v::Permissions>(g),
        "list_endpoints" => ok::<v::EndpointPage>(g),
        "create_endpoint"
        | "list_endpoint_info_details"
        | "update_endpoint_white"
        | "update_endpoint_policy"
        | "delete_endpoint_policy" => ok::<v::EndpointView>(g),
        "update_endpoint_routetable" => ok::<v::Routetables>(g),
        "list_resource_instances" => ok::<v::Resources>(g),
        "list_query_project_resource_tags" => ok::<v::ProjectTags>(g),
        "inventory_list_vpcs" => ok::<v::Vpcs>(g),
        "inventory_create_vpc" => Success::Json(201, g.subschema_for::<Vpc>()),
        "inventory_show_vpc" => ok::<Vpc>(g),
        "inventory_list_subnets" => ok::<v::Subnets>(g),
        "inventory_create_subnet" => Success::Json(201, g.subschema_for::<Subnet>()),
        "inventory_show_subnet" => ok::<Subnet>(g),
        "inventory_list_ports" => ok::<v::Ports>(g),
        "inventory_create_port" => Success::Json(201, g.subschema_for::<Port>()),
        "inventory_show_port" => ok::<Port>(g),
        "inventory_list_nodes" => ok::<v::Nodes>(g),
        "inventory_show_node" | "inventory_put_node" | "inventory_put_applied" => {
            ok::<v::NodeView>(g)
        }
        "inventory_public_services" => ok::<v::OpenServices>(g),
        "inventory_show_quota" | "inventory_put_quota" => ok::<v::ProjectQuota>(g),
        "list_audit_records" | "inventory_list_audit_records" => ok::<v::AuditRecords>(g),
        "feed_snapshot" => Success::Json(200, snapshot_schema()),
        "feed_watch" => Success::Other(
            "application/x-ndjson",
            json!({"type": "string", "description": "one JSON event per line"}),
        ),
        "openapi" => Success::Json(200, Schema::from(true)),
        "metrics" => Success::Other(
            super::limits::METRICS_CONTENT_TYPE,
            json!({"type": "string", "description": "OpenMetrics text"}),
        ),
        _ => Success::NoContent,
    }
}

/// `/feed/snapshot`: written by the store as it reads the documents.
fn snapshot_schema() -> Schema {
    let schema = json!({
        "type": "object",
        "required": ["revision", "objects"],
        "properties": {
            "revision": {"type": "integer", "minimum": 0},
            "objects": {"type": "array", "items": {
                "type": "object",
                "required": ["kind", "id", "revision", "object"],
                "properties": {
                    "kind": {"type": "string"},
                    "id": {"type": "string"},
                    "revision": {"type": "integer"},
                    "object": {"type": "object"},
                },
            }},
        },
    });
    Schema::try_from(schema).unwrap_or_default()
}

/// Routes anyone may call: no credentials (`security: []`).
const ANONYMOUS: [&str; 4] = [
    "list_version_details",
    "list_specified_version_details",
    "openapi",
    "metrics",
];

/// The schema of a path parameter: the form the handlers accept (anything else is a 404,
/// or for a node name on a write a 400).
fn path_param(name: &str) -> Value {
    match name {
        "version" => json!({"type": "string", "enum": ["v1", "v2"]}),
        "resource_type" => json!({"type": "string", "enum": ["endpoint_service", "endpoint"]}),
        "project_id" => json!({"type": "string", "minLength": 1}),
        "name" => json!({"type": "string", "pattern": pattern::NODE_NAME}),
        _ => json!({"type": "string", "pattern": pattern::UUID}),
    }
}

/// The query parameters an operation reads, with the checks the handler makes (see
/// `Paging::from_query` and the list handlers). Filters are plain strings: a value that
/// matches nothing gives an empty page, not an error.
fn query_params(op: &str) -> Vec<Value> {
    let param = |name: &str, required: bool, schema: Value| json!({"name": name, "in": "query", "required": required, "schema": schema});
    let filters = |names: &[&str]| -> Vec<Value> {
        names
            .iter()
            .map(|n| param(n, false, json!({"type": "string"})))
            .collect()
    };
    let paging = |max_limit: usize| {
        vec![
            param(
                "limit",
                false,
                json!({"type": "integer", "minimum": 0, "maximum": max_limit, "default": 10}),
            ),
            param(
                "offset",
                false,
                json!({"type": "integer", "minimum": 0, "maximum": usize::MAX, "default": 0}),
            ),
            param(
                "sort_key",
                false,
                json!({"enum": ["create_at", "created_at", "update_at", "updated_at"]}),
            ),
            param("sort_dir", false, json!({"enum": ["asc", "desc"]})),
        ]
    };
    let mut out = match op {
        "list_endpoint_service" => paging(1000),
        "list_service_public_details" => paging(1000),
        "list_endpoints" => paging(1000),
        "list_service_connections" => paging(1000),
        "list_service_permissions_details" => paging(500),
        _ => Vec::new(),
    };
    out.extend(match op {
        "feed_watch" => vec![param(
            "after",
            true,
            json!({"type": "integer", "minimum": 0}),
        )],
        "list_quota_details" => vec![param(
            "type",
            false,
            json!({"enum": ["endpoint_service", "endpoint"]}),
        )],
        "list_endpoint_service" => filters(&["endpoint_service_name", "id", "status"]),
        // Exactly one of the two (400 otherwise), which a parameter list cannot state.
        "list_service_describe_details" | "list_service_public_details" => {
            filters(&["endpoint_service_name", "id"])
        }
        "list_endpoints" => filters(&["endpoint_service_name", "vpc_id", "id"]),
        "list_service_connections" => {
            let mut f = filters(&["id", "status"]);
            f.push(param(
                "marker_id",
                false,
                json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX}),
            ));
            f
        }
        "list_service_permissions_details" => filters(&["permission"]),
        "list_audit_records" | "inventory_list_audit_records" => {
            let mut a = vec![
                param("since", false, json!({"type": "string", "format": "date-time"})),
                param(
                    "limit",
                    false,
                    json!({"type": "integer", "minimum": 1, "maximum": super::audit::MAX_LIMIT, "default": 100}),
                ),
            ];
            if op == "inventory_list_audit_records" {
                a.push(param("project_id", false, json!({"type": "string"})));
            }
            a
        }
        _ => Vec::new(),
    });
    out
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

/// The responses of one operation: its success, then the errors it can answer.
fn responses(method: &str, path: &str, op: &str, body: bool, g: &mut SchemaGenerator) -> Value {
    let mut r = Map::new();
    match response(op, g) {
        Success::Json(status, schema) => {
            r.insert(
                status.to_string(),
                json!({"description": "success", "content": {"application/json": {"schema": schema}}}),
            );
        }
        Success::Other(media, schema) => {
            r.insert(
                "200".into(),
                json!({"description": "success", "content": {media: {"schema": schema}}}),
            );
        }
        Success::NoContent => {
            r.insert("204".into(), json!({"description": "done, no content"}));
        }
    }
    let anonymous = ANONYMOUS.contains(&op);
    let params = path.matches('{').count();
    let tenant = path.starts_with("/v1/") || path.starts_with("/v2/");
    let errors = [
        (
            "400",
            body || tenant || op == "feed_watch" || op == "inventory_list_audit_records",
            "invalid request (error_code and a message naming the field)",
        ),
        ("401", !anonymous, "no or bad credentials"),
        (
            "403",
            !anonymous,
            "credentials without the scope or project",
        ),
        (
            "404",
            params > usize::from(tenant),
            "unknown or malformed id, or invisible resource",
        ),
        (
            "409",
            method != "get" && !anonymous,
            "conflict with the current state",
        ),
        ("413", body, "body larger than the limit"),
    ];
    for (status, applies, description) in errors {
        if applies {
            r.insert(status.into(), error(description));
        }
    }
    // Any request, anonymous ones by their source address.
    let mut limited = error(
        "a request rate limit, or the back-off after failed authentications: retry after \
         Retry-After seconds",
    );
    limited["headers"] = json!({"Retry-After": {
        "description": "whole seconds to wait, at least 1",
        "schema": {"type": "integer", "minimum": 1},
    }});
    r.insert("429".into(), limited);
    r.insert("default".into(), error("internal error"));
    Value::Object(r)
}

/// One operation's entry under its path.
fn operation(
    (method, path, op, summary, body): (&str, &str, &str, &str, bool),
    req: &mut SchemaGenerator,
    resp: &mut SchemaGenerator,
) -> Value {
    let mut params: Vec<Value> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": path_param(name)}))
        .collect();
    params.extend(query_params(op));
    let mut o = json!({
        "operationId": op,
        "summary": summary,
        "parameters": params,
        "responses": responses(method, path, op, body, resp),
    });
    if ANONYMOUS.contains(&op) {
        o["security"] = json!([]);
    }
    if body {
        let schema =
            request_schema(op, req).map_or_else(|| json!({"type": "object"}), |s| json!(s));
        o["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        });
    }
    o
}

/// JSON Schema 2020-12 (the dialect of OpenAPI 3.1) with definitions under
/// `components/schemas`.
fn generator(serialize: bool) -> SchemaGenerator {
    let s = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    if serialize {
        s.for_serialize()
    } else {
        s.for_deserialize()
    }
    .into_generator()
}

/// Replaces every `$ref` to `from` under `v` by one to `to`.
fn rename_refs(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "$ref" && x.as_str() == Some(from) {
                    *x = json!(to);
                } else {
                    rename_refs(x, from, to);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rename_refs(x, from, to)),
        _ => {}
    }
}

/// The definitions of both generators. A type read and written differently (a field with a
/// default is optional in a request but always in a response) keeps its name for the
/// response and gets `…Request` for the request.
fn definitions(
    paths: &mut Map<String, Value>,
    req: &mut SchemaGenerator,
    resp: &mut SchemaGenerator,
) -> Map<String, Value> {
    let mut out: Map<String, Value> = resp.take_definitions(true);
    let mut requests: Map<String, Value> = req.take_definitions(true);
    let clashes: Vec<String> = requests
        .iter()
        .filter(|(k, v)| out.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone())
        .collect();
    for name in clashes {
        let (from, to) = (
            format!("#/components/schemas/{name}"),
            format!("#/components/schemas/{name}Request"),
        );
        for v in requests.values_mut() {
            rename_refs(v, &from, &to);
        }
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for o in item.values_mut() {
                if let Some(b) = o.get_mut("requestBody") {
                    rename_refs(b, &from, &to);
                }
            }
        }
        if let Some(v) = requests.remove(&name) {
            requests.insert(format!("{name}Request"), v);
        }
    }
    out.extend(requests);
    out
}

/// The OpenAPI 3.1 document: paths from the operation table, request and response schemas
/// derived from the Rust types the handlers decode and encode.
pub fn document() -> Value {
    let (mut req, mut resp) = (generator(false), generator(true));
    let mut paths: Map<String, Value> = Map::new();
    for &(method, path, op, summary, body) in OPERATIONS {
        let o = operation((method, path, op, summary, body), &mut req, &mut resp);
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = o;
    }
    let mut schemas = definitions(&mut paths, &mut req, &mut resp);
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
