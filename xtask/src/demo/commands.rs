//! What the operator, the provider and the consumer type: inventory, service and whitelist,
//! endpoint.
use anyhow::{Result, bail};

use super::{
    B_MAC, BACKEND_IP, C_MAC, CONSUMER_IP, CONSUMER_PROJECT, Demo, ENDPOINT_IP, NODE,
    PROVIDER_PROJECT, UNDERLAY_IP, ui::field,
};

impl Demo {
    pub(super) fn inventory(&mut self) -> Result<()> {
        let ids = &self.ids;
        self.cli(&[
            "node",
            "register",
            "--profile",
            "operator",
            NODE,
            "--underlay-ip",
            UNDERLAY_IP,
        ])?;
        for (owner, name, vpc, subnet, port, ip, mac) in [
            (
                PROVIDER_PROJECT,
                "provider-vpc",
                &ids.provider_vpc,
                &ids.provider_subnet,
                &ids.backend_port,
                BACKEND_IP,
                B_MAC,
            ),
            (
                CONSUMER_PROJECT,
                "consumer-vpc",
                &ids.consumer_vpc,
                &ids.consumer_subnet,
                &ids.consumer_port,
                CONSUMER_IP,
                C_MAC,
            ),
        ] {
            self.cli(&[
                "vpc",
                "create",
                "--profile",
                "operator",
                "--owner",
                owner,
                "--cidr",
                "10.0.0.0/24",
                "--name",
                name,
                "--id",
                vpc,
            ])?;
            self.cli(&[
                "subnet",
                "create",
                "--profile",
                "operator",
                "--vpc-id",
                vpc,
                "--cidr",
                "10.0.0.0/24",
                "--id",
                subnet,
            ])?;
            self.cli(&[
                "port",
                "create",
                "--profile",
                "operator",
                "--subnet-id",
                subnet,
                "--node",
                NODE,
                "--ip",
                ip,
                "--mac",
                mac,
                "--id",
                port,
            ])?;
        }
        self.cli(&["vpc", "list", "--profile", "operator"])?;
        Ok(())
    }

    pub(super) fn service(&mut self) -> Result<String> {
        let out = self.cli(&[
            "service",
            "create",
            "--profile",
            "provider",
            "--port-id",
            &self.ids.backend_port,
            "--vpc-id",
            &self.ids.provider_vpc,
            "--port",
            "8080:80",
            "--name",
            "web",
            "--approval",
            "true",
            "--wait",
        ])?;
        let service = field(&out, "id")?;
        self.cli(&[
            "permission",
            "add",
            "--profile",
            "provider",
            &service,
            CONSUMER_PROJECT,
        ])?;
        Ok(service)
    }

    pub(super) fn endpoint(&mut self, service: &str) -> Result<String> {
        let out = self.cli(&[
            "endpoint",
            "create",
            "--profile",
            "consumer",
            "--service-id",
            service,
            "--vpc-id",
            &self.ids.consumer_vpc,
            "--subnet-id",
            &self.ids.consumer_subnet,
            "--port-ip",
            ENDPOINT_IP,
            "--enable-dns",
        ])?;
        let endpoint = field(&out, "id")?;
        let status = field(&out, "status")?;
        if status != "pendingAcceptance" {
            bail!("expected the new endpoint to be pendingAcceptance, it is {status}");
        }
        self.cli(&["connection", "list", "--profile", "provider", service])?;
        Ok(endpoint)
    }
}
