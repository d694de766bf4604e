//! The verbs: each turns its arguments into API calls and returns what to print.
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::{
    CliError, CliResult, Client,
    args::{
        ApiCommand, AuditCmd, ConnectionCmd, EndpointCmd, EndpointCreate, NodeCmd, Page,
        PermissionCmd, PortCmd, PublicServiceCmd, QuotaCmd, ServiceCmd, ServiceCreate,
        ServiceUpdate, SubnetCmd, TagCmd, TagResource, VpcCmd, WaitArgs,
    },
    client::seg,
    output::{Column, Output},
};

// The table columns of each listing (header, field): data of one shape, not repeated code.
const SERVICE_COLS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "service_name"),
    ("STATUS", "status"),
    ("SERVER_TYPE", "server_type"),
    ("VPC", "vpc_id"),
    ("IP", "ip"),
    ("PORTS", "ports"),
    ("APPROVAL", "approval_enabled"),
];
const ENDPOINT_COLS: &[Column] = &[
    ("ID", "id"),
    ("SERVICE", "endpoint_service_name"),
    ("STATUS", "status"),
    ("IP", "ip"),
    ("VPC", "vpc_id"),
    ("SUBNET", "subnet_id"),
    ("WHITELIST", "whitelist"),
];
const CONNECTION_COLS: &[Column] = &[
    ("ID", "id"),
    ("STATUS", "status"),
    ("PROJECT", "project_id"),
    ("DOMAIN", "domain_id"),
    ("MARKER", "marker_id"),
    ("CREATED", "created_at"),
];
const PERMISSION_COLS: &[Column] = &[
    ("ID", "id"),
    ("PERMISSION", "permission"),
    ("TYPE", "permission_type"),
    ("CREATED", "created_at"),
];
const TAG_COLS: &[Column] = &[("KEY", "key"), ("VALUE", "value")];
const PROJECT_TAG_COLS: &[Column] = &[("KEY", "key"), ("VALUES", "values")];
const QUOTA_COLS: &[Column] = &[("TYPE", "type"), ("USED", "used"), ("QUOTA", "quota")];
const PROJECT_QUOTA_COLS: &[Column] = &[
    ("PROJECT", "project_id"),
    ("ENDPOINT_SERVICE", "endpoint_service"),
    ("ENDPOINT", "endpoint"),
    ("API_RATE", "api_rate_per_second"),
    ("API_BURST", "api_rate_burst"),
];
const VPC_COLS: &[Column] = &[
    ("ID", "id"),
    ("PROJECT", "project_id"),
    ("NAME", "name"),
    ("CIDR", "cidr"),
    ("VNI", "vni"),
];
const SUBNET_COLS: &[Column] = &[
    ("ID", "id"),
    ("VPC", "vpc_id"),
    ("CIDR", "cidr"),
    ("GATEWAY", "gateway_ip"),
    ("PROJECT", "project_id"),
];
const PORT_COLS: &[Column] = &[
    ("ID", "id"),
    ("NODE", "node"),
    ("IP", "ip"),
    ("MAC", "mac"),
    ("SUBNET", "subnet_id"),
    ("VPC", "vpc_id"),
];
const NODE_COLS: &[Column] = &[
    ("NAME", "name"),
    ("UNDERLAY_IP", "underlay_ip"),
    ("SNAT_IP", "snat_ip"),
    ("APPLIED_REVISION", "applied_revision"),
    ("APPLIED_AT", "applied_at"),
];

/// Runs one command against the API.
pub async fn execute(c: &Client, cmd: ApiCommand) -> CliResult<Output> {
    match cmd {
        ApiCommand::Service(a) => service(c, a.cmd).await,
        ApiCommand::Endpoint(a) => endpoint(c, a.cmd).await,
        ApiCommand::Permission(a) => permission(c, a.cmd).await,
        ApiCommand::Connection(a) => connection(c, a.cmd).await,
        ApiCommand::Tag(a) => tag(c, a.cmd).await,
        ApiCommand::Quota(a) => quota(c, a.cmd).await,
        ApiCommand::PublicService(a) => match a.cmd {
            PublicServiceCmd::List => {
                let v = c.get("/inventory/public-services", &[]).await?;
                Ok(list(&v, "endpoint_services", SERVICE_COLS))
            }
        },
        ApiCommand::Vpc(a) => vpc(c, a.cmd).await,
        ApiCommand::Subnet(a) => subnet(c, a.cmd).await,
        ApiCommand::Port(a) => port(c, a.cmd).await,
        ApiCommand::Node(a) => node(c, a.cmd).await,
        ApiCommand::Audit(a) => audit(c, a.cmd).await,
    }
}

// ---- helpers ----

fn list(v: &Value, key: &str, columns: &'static [Column]) -> Output {
    Output::List {
        items: v[key].as_array().cloned().unwrap_or_default(),
        columns,
    }
}

fn done(text: String, json: Value) -> Output {
    Output::Message { text, json }
}

fn page_query(p: &Page) -> Vec<(&'static str, String)> {
    vec![
        ("limit", p.limit.to_string()),
        ("offset", p.offset.to_string()),
    ]
}

/// `CLIENT[:SERVER][/tcp|udp]` → a port mapping.
pub fn parse_port_mapping(s: &str) -> CliResult<Value> {
    let bad = || {
        CliError::Usage(format!(
            "invalid port mapping {s:?}: expected CLIENT[:SERVER][/tcp|udp], e.g. 80:8080/tcp"
        ))
    };
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_uppercase()),
        None => (s, "TCP".to_owned()),
    };
    if proto != "TCP" && proto != "UDP" {
        return Err(bad());
    }
    let num = |p: &str| p.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(bad);
    let (client, server) = match ports.split_once(':') {
        Some((c, s)) => (num(c)?, num(s)?),
        None => (num(ports)?, num(ports)?),
    };
    Ok(json!({"client_port": client, "server_port": server, "protocol": proto}))
}

/// `KEY=VALUE` (or `KEY`) → a tag; `with_value` is false for a bare key.
pub fn parse_tag(s: &str) -> CliResult<(Value, bool)> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (s, None),
    };
    if k.is_empty() {
        return Err(CliError::Usage(format!(
            "invalid tag {s:?}: expected KEY=VALUE"
        )));
    }
    Ok(match v {
        Some(v) => (json!({"key": k, "value": v}), true),
        None => (json!({"key": k}), false),
    })
}

fn tags_body(tags: &[String]) -> CliResult<Value> {
    tags.iter()
        .map(|t| {
            parse_tag(t).map(|(mut v, has)| {
                if !has {
                    v["value"] = json!("");
                }
                v
            })
        })
        .collect::<CliResult<Vec<_>>>()
        .map(Value::Array)
}

/// A whitelist entry as the API takes it: a bare domain id becomes `iam:domain::<id>`.
pub fn permission_entry(s: &str) -> String {
    if s == "*" || s.contains("::") {
        s.to_owned()
    } else {
        format!("iam:domain::{s}")
    }
}

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

/// Polls `path` until `check` says it is finished (`Some(Ok)`) or failed (`Some(Err)`).
async fn wait_until(
    c: &Client,
    path: &str,
    what: &str,
    timeout: u64,
    check: impl Fn(&Value) -> Option<Result<(), String>>,
) -> CliResult<Value> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut delay = Duration::from_millis(100);
    loop {
        let v = c.get(path, &[]).await?;
        match check(&v) {
            Some(Ok(())) => return Ok(v),
            Some(Err(msg)) => return Err(CliError::Failed(msg)),
            None => {}
        }
        if Instant::now() + delay > deadline {
            return Err(CliError::Timeout {
                what: format!("{what} (last status {})", status(&v)),
                secs: timeout,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

fn put_opt(body: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        body.insert(key.to_owned(), v.into());
    }
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

// ---- endpoint services ----

async fn service(c: &Client, cmd: ServiceCmd) -> CliResult<Output> {
    let base = c.v1("/vpc-endpoint-services")?;
    match cmd {
        ServiceCmd::Create(a) => service_create(c, &base, a).await,
        ServiceCmd::List { name, status, page } => {
            let mut q = page_query(&page);
            if let Some(n) = name {
                q.push(("endpoint_service_name", n));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            Ok(list(
                &c.get(&base, &q).await?,
                "endpoint_services",
                SERVICE_COLS,
            ))
        }
        ServiceCmd::Show { service } => {
            let id = if is_uuid(&service) {
                service
            } else {
                let d = c
                    .get(
                        &format!("{base}/describe"),
                        &[("endpoint_service_name", service)],
                    )
                    .await?;
                d["id"].as_str().unwrap_or_default().to_owned()
            };
            Ok(Output::Object(
                c.get(&format!("{base}/{}", seg(&id)), &[]).await?,
            ))
        }
        ServiceCmd::Update(a) => service_update(c, &base, a).await,
        ServiceCmd::Rename { id, name } => {
            let v = c
                .put(
                    &format!("{base}/{}/name", seg(&id)),
                    &json!({"endpoint_service_name": name}),
                )
                .await?;
            let full = v["endpoint_service_name"].as_str().unwrap_or_default();
            Ok(done(format!("renamed {id} to {full}"), v))
        }
        ServiceCmd::Delete { id } => {
            c.delete(&format!("{base}/{}", seg(&id))).await?;
            Ok(done(
                format!("deleted endpoint service {id}"),
                json!({"id": id}),
            ))
        }
        ServiceCmd::Public { name, page } => {
            let mut q = page_query(&page);
            if let Some(n) = name {
                q.push(("endpoint_service_name", n));
            }
            let v = c.get(&format!("{base}/public"), &q).await?;
            Ok(list(
                &v,
                "endpoint_services",
                &[
                    ("ID", "id"),
                    ("NAME", "service_name"),
                    ("TYPE", "service_type"),
                    ("STATUS", "status"),
                    ("PORTS", "ports"),
                    ("APPROVAL", "approval_enabled"),
                    ("OWNER", "owner"),
                    ("CREATED", "created_at"),
                ],
            ))
        }
    }
}

async fn service_create(c: &Client, base: &str, a: ServiceCreate) -> CliResult<Output> {
    let ports = a
        .ports
        .iter()
        .map(|p| parse_port_mapping(p))
        .collect::<CliResult<Vec<_>>>()?;
    let mut body = Map::new();
    body.insert("port_id".into(), json!(a.port_id));
    body.insert("vpc_id".into(), json!(a.vpc_id));
    body.insert("server_type".into(), json!(a.server_type));
    body.insert("ports".into(), json!(ports));
    body.insert("approval_enabled".into(), json!(a.approval));
    put_opt(&mut body, "service_name", a.name);
    put_opt(&mut body, "service_type", a.service_type);
    put_opt(&mut body, "ip", a.ip);
    put_opt(&mut body, "tcp_proxy", a.tcp_proxy);
    put_opt(
        &mut body,
        "proxy_header_placement",
        a.proxy_header_placement,
    );
    put_opt(&mut body, "private_dns_name", a.private_dns_name);
    put_opt(&mut body, "description", a.description);
    put_opt(&mut body, "max_connections", a.max_connections);
    put_opt(
        &mut body,
        "max_new_connections_per_second",
        a.max_new_connections_per_second,
    );
    if !a.tags.is_empty() {
        body.insert("tags".into(), tags_body(&a.tags)?);
    }
    let v = c.post(base, &Value::Object(body)).await?;
    let v = wait_service(c, base, v, &a.wait).await?;
    Ok(Output::Object(v))
}

async fn wait_service(c: &Client, base: &str, v: Value, w: &WaitArgs) -> CliResult<Value> {
    if !w.wait || status(&v) != "creating" {
        return Ok(v);
    }
    let id = v["id"].as_str().unwrap_or_default();
    wait_until(
        c,
        &format!("{base}/{}", seg(id)),
        &format!("endpoint service {id} to become available"),
        w.timeout,
        |v| match status(v) {
            "creating" => None,
            "available" => Some(Ok(())),
            s => Some(Err(format!("endpoint service {id} is {s}"))),
        },
    )
    .await
}

async fn service_update(c: &Client, base: &str, a: ServiceUpdate) -> CliResult<Output> {
    let mut body = Map::new();
    if !a.ports.is_empty() {
        let ports = a
            .ports
            .iter()
            .map(|p| parse_port_mapping(p))
            .collect::<CliResult<Vec<_>>>()?;
        body.insert("ports".into(), json!(ports));
    }
    put_opt(&mut body, "approval_enabled", a.approval);
    put_opt(&mut body, "service_name", a.name);
    put_opt(&mut body, "port_id", a.port_id);
    put_opt(&mut body, "ip", a.ip);
    put_opt(&mut body, "tcp_proxy", a.tcp_proxy);
    put_opt(
        &mut body,
        "proxy_header_placement",
        a.proxy_header_placement,
    );
    put_opt(&mut body, "private_dns_name", a.private_dns_name);
    put_opt(&mut body, "description", a.description);
    put_opt(&mut body, "max_connections", a.max_connections);
    put_opt(
        &mut body,
        "max_new_connections_per_second",
        a.max_new_connections_per_second,
    );
    if body.is_empty() {
        return Err(CliError::Usage(
            "nothing to update: give at least one of --port, --approval, --name, --port-id, \
             --ip, --tcp-proxy, --description, --max-connections, \
             --max-new-connections-per-second"
                .to_owned(),
        ));
    }
    let v = c
        .put(&format!("{base}/{}", seg(&a.id)), &Value::Object(body))
        .await?;
    Ok(Output::Object(v))
}

// ---- endpoints ----

async fn endpoint(c: &Client, cmd: EndpointCmd) -> CliResult<Output> {
    let base = c.v1("/vpc-endpoints")?;
    match cmd {
        EndpointCmd::Create(a) => endpoint_create(c, &base, a).await,
        EndpointCmd::List {
            service_name,
            vpc_id,
            page,
        } => {
            let mut q = page_query(&page);
            if let Some(n) = service_name {
                q.push(("endpoint_service_name", n));
            }
            if let Some(v) = vpc_id {
                q.push(("vpc_id", v));
            }
            Ok(list(&c.get(&base, &q).await?, "endpoints", ENDPOINT_COLS))
        }
        EndpointCmd::Show { id } => Ok(Output::Object(
            c.get(&format!("{base}/{}", seg(&id)), &[]).await?,
        )),
        EndpointCmd::Delete { id } => {
            c.delete(&format!("{base}/{}", seg(&id))).await?;
            Ok(done(format!("deleted endpoint {id}"), json!({"id": id})))
        }
        EndpointCmd::Whitelist {
            id,
            entries,
            enable,
        } => {
            let enable = enable.unwrap_or(!entries.is_empty());
            let v = c
                .put(
                    &format!("{base}/{}", seg(&id)),
                    &json!({"whitelist": entries, "enable_whitelist": enable}),
                )
                .await?;
            Ok(Output::Object(v))
        }
        EndpointCmd::Wait {
            id,
            status: want,
            timeout,
        } => {
            let v = wait_until(
                c,
                &format!("{base}/{}", seg(&id)),
                &format!("endpoint {id} to be {want}"),
                timeout,
                |v| endpoint_reached(&id, v, &want),
            )
            .await?;
            Ok(Output::Object(v))
        }
    }
}

/// Whether an endpoint has reached `want`, or a state it cannot leave on its own.
fn endpoint_reached(id: &str, v: &Value, want: &str) -> Option<Result<(), String>> {
    match status(v) {
        s if s == want => Some(Ok(())),
        s @ ("rejected" | "failed" | "deleting") => {
            Some(Err(format!("endpoint {id} is {s}, not {want}")))
        }
        _ => None,
    }
}

async fn endpoint_create(c: &Client, base: &str, a: EndpointCreate) -> CliResult<Output> {
    let mut body = Map::new();
    body.insert("endpoint_service_id".into(), json!(a.service_id));
    body.insert("vpc_id".into(), json!(a.vpc_id));
    body.insert("subnet_id".into(), json!(a.subnet_id));
    put_opt(&mut body, "port_ip", a.port_ip);
    if !a.whitelist.is_empty() {
        body.insert("whitelist".into(), json!(a.whitelist));
        body.insert("enable_whitelist".into(), json!(true));
    }
    if a.enable_dns {
        body.insert("enable_dns".into(), json!(true));
    }
    put_opt(&mut body, "max_connections", a.max_connections);
    put_opt(
        &mut body,
        "max_new_connections_per_second",
        a.max_new_connections_per_second,
    );
    put_opt(&mut body, "description", a.description);
    if !a.tags.is_empty() {
        body.insert("tags".into(), tags_body(&a.tags)?);
    }
    let v = c.post(base, &Value::Object(body)).await?;
    if !a.wait.wait {
        return Ok(Output::Object(v));
    }
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let v = wait_until(
        c,
        &format!("{base}/{}", seg(&id)),
        &format!("endpoint {id} to be accepted"),
        a.wait.timeout,
        |v| endpoint_reached(&id, v, "accepted"),
    )
    .await?;
    Ok(Output::Object(v))
}

// ---- permissions and connections ----

async fn permission(c: &Client, cmd: PermissionCmd) -> CliResult<Output> {
    let svc = |id: &str| -> CliResult<String> {
        c.v1(&format!("/vpc-endpoint-services/{}/permissions", seg(id)))
    };
    let (id, entries, action) = match cmd {
        PermissionCmd::List { service_id, page } => {
            // The API allows at most 500 whitelist entries per page.
            let page = Page {
                limit: page.limit.min(500),
                ..page
            };
            let v = c.get(&svc(&service_id)?, &page_query(&page)).await?;
            return Ok(list(&v, "permissions", PERMISSION_COLS));
        }
        PermissionCmd::Add {
            service_id,
            entries,
        } => (service_id, entries, "add"),
        PermissionCmd::Remove {
            service_id,
            entries,
        } => (service_id, entries, "remove"),
    };
    let entries: Vec<String> = entries.iter().map(|e| permission_entry(e)).collect();
    let v = c
        .post(
            &format!("{}/action", svc(&id)?),
            &json!({"permissions": entries, "action": action}),
        )
        .await?;
    let verb = if action == "add" { "added" } else { "removed" };
    Ok(done(
        format!("{verb} {} on endpoint service {id}", entries.join(", ")),
        v,
    ))
}

async fn connection(c: &Client, cmd: ConnectionCmd) -> CliResult<Output> {
    let svc = |id: &str| -> CliResult<String> {
        c.v1(&format!("/vpc-endpoint-services/{}/connections", seg(id)))
    };
    let (id, endpoints, action) = match cmd {
        ConnectionCmd::List {
            service_id,
            status,
            page,
        } => {
            let mut q = page_query(&page);
            if let Some(s) = status {
                q.push(("status", s));
            }
            let v = c.get(&svc(&service_id)?, &q).await?;
            return Ok(list(&v, "connections", CONNECTION_COLS));
        }
        ConnectionCmd::Accept {
            service_id,
            endpoint_ids,
        } => (service_id, endpoint_ids, "receive"),
        ConnectionCmd::Reject {
            service_id,
            endpoint_ids,
        } => (service_id, endpoint_ids, "reject"),
    };
    let v = c
        .post(
            &format!("{}/action", svc(&id)?),
            &json!({"action": action, "endpoints": endpoints}),
        )
        .await?;
    Ok(list(&v, "connections", CONNECTION_COLS))
}

// ---- tags ----

async fn tag(c: &Client, cmd: TagCmd) -> CliResult<Output> {
    let rtype = |r: TagResource| match r {
        TagResource::Service => "endpoint_service",
        TagResource::Endpoint => "endpoint",
    };
    match cmd {
        TagCmd::Add { resource, id, tags } => {
            let body = json!({"action": "create", "tags": tags_body(&tags)?});
            tag_action(c, rtype(resource), &id, &body).await?;
            Ok(done(format!("tagged {id} with {}", tags.join(", ")), body))
        }
        TagCmd::Remove { resource, id, tags } => {
            // A bare key sends no value: the API then deletes the key whatever its value.
            let tags = tags
                .iter()
                .map(|t| parse_tag(t).map(|(v, _)| v))
                .collect::<CliResult<Vec<_>>>()?;
            let body = json!({"action": "delete", "tags": tags});
            tag_action(c, rtype(resource), &id, &body).await?;
            Ok(done(format!("removed tags from {id}"), body))
        }
        TagCmd::List { resource, id } => match id {
            Some(id) => {
                let path = match resource {
                    TagResource::Service => {
                        c.v1(&format!("/vpc-endpoint-services/{}", seg(&id)))?
                    }
                    TagResource::Endpoint => c.v1(&format!("/vpc-endpoints/{}", seg(&id)))?,
                };
                let v = c.get(&path, &[]).await?;
                Ok(list(&v, "tags", TAG_COLS))
            }
            None => {
                let v = c
                    .get(&c.v1(&format!("/{}/tags", rtype(resource)))?, &[])
                    .await?;
                Ok(list(&v, "tags", PROJECT_TAG_COLS))
            }
        },
    }
}

async fn tag_action(c: &Client, rtype: &str, id: &str, body: &Value) -> CliResult<Value> {
    c.post(&c.v1(&format!("/{rtype}/{}/tags/action", seg(id)))?, body)
        .await
}

// ---- quotas ----

async fn quota(c: &Client, cmd: QuotaCmd) -> CliResult<Output> {
    match cmd {
        QuotaCmd::Show => {
            let v = c.get(&c.v1("/quotas")?, &[]).await?;
            Ok(list(&v["quotas"], "resources", QUOTA_COLS))
        }
        QuotaCmd::Get { project } => {
            let v = c
                .get(&format!("/inventory/quotas/{}", seg(&project)), &[])
                .await?;
            Ok(Output::List {
                items: vec![v],
                columns: PROJECT_QUOTA_COLS,
            })
        }
        QuotaCmd::Set {
            project,
            endpoint_services,
            endpoints,
            api_rate_per_second,
            api_rate_burst,
        } => {
            let mut body = Map::new();
            put_opt(&mut body, "endpoint_service", endpoint_services);
            put_opt(&mut body, "endpoint", endpoints);
            put_opt(&mut body, "api_rate_per_second", api_rate_per_second);
            put_opt(&mut body, "api_rate_burst", api_rate_burst);
            if body.is_empty() {
                return Err(CliError::Usage(
                    "give --endpoint-services, --endpoints, --api-rate-per-second and/or \
                     --api-rate-burst"
                        .to_owned(),
                ));
            }
            let v = c
                .put(
                    &format!("/inventory/quotas/{}", seg(&project)),
                    &Value::Object(body),
                )
                .await?;
            Ok(Output::List {
                items: vec![v],
                columns: PROJECT_QUOTA_COLS,
            })
        }
    }
}

// ---- audit ----

const AUDIT_COLS: &[Column] = &[
    ("AT", "at"),
    ("PROJECT", "project_id"),
    ("ACTOR", "actor"),
    ("CREDENTIAL", "credential_id"),
    ("SOURCE", "source"),
    ("ACTION", "action"),
    ("RESOURCES", "resources"),
    ("RESULT", "result"),
    ("STATUS", "status"),
    ("REQUEST_ID", "request_id"),
];

async fn audit(c: &Client, cmd: AuditCmd) -> CliResult<Output> {
    let AuditCmd::List {
        project,
        all,
        since,
        limit,
    } = cmd;
    let mut query = vec![("limit", limit.to_string())];
    if let Some(s) = since {
        query.push(("since", since_time(&s, chrono::Utc::now())?));
    }
    // A project's records through its own path (a tenant's, or any for the operator).
    let path = match project.as_deref().or(c.project().ok()).filter(|_| !all) {
        Some(p) => format!("/v1/{}/audit-records", seg(p)),
        None => "/inventory/audit-records".to_owned(),
    };
    let v = c.get(&path, &query).await?;
    Ok(list(&v, "audit_records", AUDIT_COLS))
}

/// `--since`: an RFC 3339 time as given, or an age (`30m`) before `now`.
pub fn since_time(s: &str, now: chrono::DateTime<chrono::Utc>) -> CliResult<String> {
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return Ok(s.to_owned());
    }
    let bad = || {
        CliError::Usage(format!(
            "invalid --since {s:?}: expected an RFC 3339 time (2026-12-01T00:00:00Z) or an age \
             such as 90s, 30m, 12h, 7d"
        ))
    };
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let age = match unit {
        's' => chrono::TimeDelta::try_seconds(n),
        'm' => chrono::TimeDelta::try_minutes(n),
        'h' => chrono::TimeDelta::try_hours(n),
        'd' => chrono::TimeDelta::try_days(n),
        _ => None,
    }
    .filter(|_| n >= 0)
    .ok_or_else(bad)?;
    let t = now.checked_sub_signed(age).ok_or_else(bad)?;
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

// ---- inventory ----

/// Items of an inventory list whose `field` equals `want` (all when `want` is None).
fn filtered(
    v: &Value,
    key: &str,
    field: &str,
    want: Option<&str>,
    columns: &'static [Column],
) -> Output {
    let items = v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| want.is_none_or(|w| i[field].as_str() == Some(w)))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Output::List { items, columns }
}

/// One inventory collection (`/inventory/{path}`, listed under `path`): the show, delete
/// and create that vpcs, subnets, ports and nodes share.
struct Inventory {
    path: &'static str,
    /// Its name in messages.
    kind: &'static str,
}

const VPCS: Inventory = Inventory {
    path: "vpcs",
    kind: "vpc",
};
const SUBNETS: Inventory = Inventory {
    path: "subnets",
    kind: "subnet",
};
const PORTS: Inventory = Inventory {
    path: "ports",
    kind: "port",
};
const NODES: Inventory = Inventory {
    path: "nodes",
    kind: "node",
};

impl Inventory {
    fn url(&self) -> String {
        format!("/inventory/{}", self.path)
    }

    fn item(&self, id: &str) -> String {
        format!("/inventory/{}/{}", self.path, seg(id))
    }

    async fn create(&self, c: &Client, body: Map<String, Value>) -> CliResult<Output> {
        Ok(Output::Object(
            c.post(&self.url(), &Value::Object(body)).await?,
        ))
    }

    /// The items whose `field` is `want` (all without it).
    async fn list(
        &self,
        c: &Client,
        field: &str,
        want: Option<&str>,
        columns: &'static [Column],
    ) -> CliResult<Output> {
        let v = c.get(&self.url(), &[]).await?;
        Ok(filtered(&v, self.path, field, want, columns))
    }

    async fn show(&self, c: &Client, id: &str) -> CliResult<Output> {
        Ok(Output::Object(c.get(&self.item(id), &[]).await?))
    }

    /// Deletes the item; `key` names its id in the JSON answer.
    async fn delete(&self, c: &Client, key: &str, id: String) -> CliResult<Output> {
        c.delete(&self.item(&id)).await?;
        let text = format!("deleted {} {id}", self.kind);
        Ok(done(text, json!({ key: id })))
    }
}

async fn vpc(c: &Client, cmd: VpcCmd) -> CliResult<Output> {
    match cmd {
        VpcCmd::Create {
            owner,
            cidr,
            name,
            vni,
            id,
        } => {
            let mut body = Map::new();
            body.insert("project_id".into(), json!(owner));
            body.insert("cidr".into(), json!(cidr));
            put_opt(&mut body, "name", name);
            put_opt(&mut body, "vni", vni);
            put_opt(&mut body, "id", id);
            VPCS.create(c, body).await
        }
        VpcCmd::List { owner } => VPCS.list(c, "project_id", owner.as_deref(), VPC_COLS).await,
        VpcCmd::Show { id } => VPCS.show(c, &id).await,
        VpcCmd::Delete { id } => VPCS.delete(c, "id", id).await,
    }
}

async fn subnet(c: &Client, cmd: SubnetCmd) -> CliResult<Output> {
    match cmd {
        SubnetCmd::Create {
            vpc_id,
            cidr,
            gateway_ip,
            dns_address,
            id,
        } => {
            let mut body = Map::new();
            body.insert("vpc_id".into(), json!(vpc_id));
            body.insert("cidr".into(), json!(cidr));
            put_opt(&mut body, "gateway_ip", gateway_ip);
            put_opt(&mut body, "dns_address", dns_address);
            put_opt(&mut body, "id", id);
            SUBNETS.create(c, body).await
        }
        SubnetCmd::List { vpc_id } => {
            SUBNETS
                .list(c, "vpc_id", vpc_id.as_deref(), SUBNET_COLS)
                .await
        }
        SubnetCmd::Show { id } => SUBNETS.show(c, &id).await,
        SubnetCmd::Delete { id } => SUBNETS.delete(c, "id", id).await,
    }
}

async fn port(c: &Client, cmd: PortCmd) -> CliResult<Output> {
    match cmd {
        PortCmd::Create {
            subnet_id,
            node,
            ip,
            mac,
            id,
        } => {
            let mut body = Map::new();
            body.insert("subnet_id".into(), json!(subnet_id));
            body.insert("node".into(), json!(node));
            put_opt(&mut body, "ip", ip);
            put_opt(&mut body, "mac", mac);
            put_opt(&mut body, "id", id);
            PORTS.create(c, body).await
        }
        PortCmd::List { node, subnet_id } => {
            let out = PORTS.list(c, "node", node.as_deref(), PORT_COLS).await?;
            Ok(match (out, subnet_id) {
                (Output::List { items, columns }, Some(s)) => Output::List {
                    items: items
                        .into_iter()
                        .filter(|i| i["subnet_id"].as_str() == Some(s.as_str()))
                        .collect(),
                    columns,
                },
                (out, _) => out,
            })
        }
        PortCmd::Show { id } => PORTS.show(c, &id).await,
        PortCmd::Delete { id } => PORTS.delete(c, "id", id).await,
    }
}

async fn node(c: &Client, cmd: NodeCmd) -> CliResult<Output> {
    match cmd {
        NodeCmd::Register { name, underlay_ip } => {
            let v = c
                .put(&NODES.item(&name), &json!({"underlay_ip": underlay_ip}))
                .await?;
            Ok(Output::Object(v))
        }
        NodeCmd::List => Ok(list(&c.get(&NODES.url(), &[]).await?, "nodes", NODE_COLS)),
        NodeCmd::Show { name } => NODES.show(c, &name).await,
        NodeCmd::Delete { name } => NODES.delete(c, "name", name).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_an_age() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            since_time("2026-12-01T00:00:00Z", now).unwrap(),
            "2026-12-01T00:00:00Z"
        );
        assert_eq!(since_time("90s", now).unwrap(), "2026-12-03T11:58:30Z");
        assert_eq!(since_time("12h", now).unwrap(), "2026-12-03T00:00:00Z");
        assert_eq!(since_time("2d", now).unwrap(), "2026-12-01T12:00:00Z");
        for bad in ["", "h", "5w", "-1h", "yesterday", "1.5h"] {
            let e = since_time(bad, now).unwrap_err().to_string();
            assert!(e.contains("--since"), "{bad}: {e}");
        }
    }

    #[test]
    fn port_mappings_parse() {
        assert_eq!(
            parse_port_mapping("80:8080/udp").unwrap(),
            json!({"client_port": 80, "server_port": 8080, "protocol": "UDP"})
        );
        assert_eq!(parse_port_mapping("443").unwrap()["server_port"], 443);
        for bad in ["", "0", "80:", "80/icmp", "70000", "a:b"] {
            assert!(parse_port_mapping(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_and_permissions_parse() {
        assert_eq!(
            parse_tag("a=b").unwrap(),
            (json!({"key": "a", "value": "b"}), true)
        );
        assert_eq!(parse_tag("a").unwrap(), (json!({"key": "a"}), false));
        assert!(parse_tag("=b").is_err());
        assert_eq!(permission_entry("dom1"), "iam:domain::dom1");
        assert_eq!(permission_entry("*"), "*");
        assert_eq!(
            permission_entry("organizations:orgPath::o/r"),
            "organizations:orgPath::o/r"
        );
    }
}
