"""The provider/consumer story driven by the official Huawei Cloud Python SDK
(huaweicloudsdkvpcep 3.1.219), unchanged, against a vpcep control plane.

Run by the `sdk::official_python_sdk` test (ignored unless VPCEP_SDK_PYTHON names a Python
with the SDK installed). Inputs come from the environment; exits non-zero on any mismatch.
"""
import os
import time

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkvpcep.v1 import *  # noqa: F401,F403

E = os.environ


def client(ak, sk, project, ca=E["VPCEP_CA_FILE"]):
    cfg = HttpConfig.get_default_config()
    cfg.timeout = (5, 30)
    # Over HTTPS, the server's certificate verified against the deployment's CA.
    cfg.ignore_ssl_verification = False
    cfg.ssl_ca_cert = ca
    return (VpcepClient.new_builder()
            .with_credentials(BasicCredentials(ak, sk, project))
            .with_endpoints([E["VPCEP_URL"]])
            .with_http_config(cfg)
            .build())


assert E["VPCEP_URL"].startswith("https://"), E["VPCEP_URL"]
prov = client("AK-PROVIDER", "SK-provider", "proj-provider")
cons = client("AK-CONSUMER", "SK-consumer", "proj-consumer")

# Without the deployment's CA (only the SDK's default bundle) the server is refused.
try:
    client("AK-PROVIDER", "SK-provider", "proj-provider", ca=None).list_endpoint_service(
        ListEndpointServiceRequest(limit=1))
    raise SystemExit("a client without the CA reached the server")
except exceptions.SslHandShakeException:
    pass

s = prov.create_endpoint_service(CreateEndpointServiceRequest(CreateEndpointServiceRequestBody(
    port_id=E["PORT"], vpc_id=E["PVPC"], server_type="VM", service_name="web",
    ports=[PortList(client_port=8080, server_port=80, protocol="TCP"),
           PortList(client_port=5353, server_port=53, protocol="UDP")],
    tags=[TagList(key="k", value="v")])))
assert s.status == "creating" and s.service_name.endswith(".web." + s.id), s
for _ in range(100):
    if prov.list_service_details(ListServiceDetailsRequest(vpc_endpoint_service_id=s.id)).status == "available":
        break
    time.sleep(0.05)
else:
    raise SystemExit("service never became available")
assert prov.list_endpoint_service(ListEndpointServiceRequest(endpoint_service_name="WEB", limit=5)).total_count == 1
r = prov.add_or_remove_service_permissions(AddOrRemoveServicePermissionsRequest(
    vpc_endpoint_service_id=s.id,
    body=AddOrRemoveServicePermissionsRequestBody(permissions=["iam:domain::proj-consumer"], action="add")))
assert r.permissions == ["iam:domain::proj-consumer"], r
d = cons.list_service_describe_details(ListServiceDescribeDetailsRequest(id=s.id))
assert d.service_name == s.service_name
# A consumer is shown the client side of the ports and nothing of the provider's network.
shown = cons.list_service_details(ListServiceDetailsRequest(vpc_endpoint_service_id=s.id))
assert shown.status == "available" and shown.ports[0].client_port == 8080, shown
assert shown.ports[0].server_port is None and shown.port_id is None and shown.vpc_id is None, shown
assert shown.ip is None and shown.project_id is None and not shown.tags, shown
assert cons.list_service_public_details(ListServicePublicDetailsRequest()).total_count == 1
e = cons.create_endpoint(CreateEndpointRequest(CreateEndpointRequestBody(
    endpoint_service_id=s.id, vpc_id=E["CVPC"], subnet_id=E["CSUBNET"], port_ip="10.0.0.100",
    enable_dns=True)))
assert e.status == "pendingAcceptance" and e.ip == "10.0.0.100", e
assert e.enable_dns, e
assert not cons.list_endpoint_info_details(ListEndpointInfoDetailsRequest(vpc_endpoint_id=e.id)).dns_names, "names before acceptance"
c = prov.list_service_connections(ListServiceConnectionsRequest(
    vpc_endpoint_service_id=s.id, marker_id=str(e.marker_id)))
assert c.connections[0].id == e.id
a = prov.accept_or_reject_endpoint(AcceptOrRejectEndpointRequest(
    vpc_endpoint_service_id=s.id, body=AcceptOrRejectEndpointRequestBody(action="receive", endpoints=[e.id])))
assert a.connections[0].status == "accepted"
info = cons.list_endpoint_info_details(ListEndpointInfoDetailsRequest(vpc_endpoint_id=e.id))
assert info.status == "accepted"
# Accepted with DNS on: the endpoint's internal domain names.
assert len(info.dns_names) == 2 and info.dns_names[0] == e.id + ".vpcep.local-1.internal", info
cons.batch_add_or_remove_resource_instance(BatchAddOrRemoveResourceInstanceRequest(
    resource_type="endpoint", resource_id=e.id,
    body=BatchAddOrRemoveResourceInstanceRequestBody(action="create", tags=[ResourceTag(key="a", value="b")])))
t = cons.list_query_project_resource_tags(ListQueryProjectResourceTagsRequest(resource_type="endpoint"))
assert t.tags[0].key == "a" and t.tags[0].values == ["b"], t
f = cons.list_resource_instances(ListResourceInstancesRequest(
    resource_type="endpoint", body=QueryResourceInstanceTagsBody(action="filter", limit="10", offset="0")))
assert f.total_count == 1
q = prov.list_quota_details(ListQuotaDetailsRequest(type="endpoint_service")).quotas.resources[0]
assert (q.type, q.used, q.quota) == ("endpoint_service", 1, 20), q
assert [v.id for v in prov.list_version_details(ListVersionDetailsRequest()).versions] == ["v1", "v2"]
try:
    prov.delete_endpoint_service(DeleteEndpointServiceRequest(vpc_endpoint_service_id=s.id))
    raise SystemExit("delete with an accepted endpoint succeeded")
except exceptions.ClientRequestException as ex:
    assert ex.status_code == 409 and ex.error_code == "VPCEP.0409" and ex.request_id, ex
try:
    prov.list_service_details(ListServiceDetailsRequest(vpc_endpoint_service_id="not-a-uuid"))
    raise SystemExit("bad id succeeded")
except exceptions.ClientRequestException as ex:
    assert ex.status_code == 404, ex
cons.delete_endpoint(DeleteEndpointRequest(vpc_endpoint_id=e.id))
prov.delete_endpoint_service(DeleteEndpointServiceRequest(vpc_endpoint_service_id=s.id))
assert prov.list_endpoint_service(ListEndpointServiceRequest()).total_count == 0
print("official SDK story: ok")
