//! The checks of each step: what the agent programmed, and what a request through the
//! endpoint gets.
use std::fs;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    CURL, DNS_ADDRESS, Demo, ENDPOINT_IP, check_interrupted,
    ui::{print_indented, show_command, wait_for},
};

impl Demo {
    /// Waits until the agent has programmed the endpoint with this acceptance.
    pub(super) fn wait_for_map(&mut self, accepted: bool) -> Result<()> {
        let pins = self.pin_dir_str();
        let log = self.path("agent.log");
        let state = if accepted { "accepted" } else { "not accepted" };
        let waited = wait_for(
            &format!("the agent to program the endpoint as {state}"),
            20,
            || {
                if let Some(p) = self.agent.as_mut() {
                    p.alive(&log)?;
                }
                let out = self
                    .vpcep(&["dataplane", "endpoints", "--pin-dir", &pins, "-o", "json"])
                    .output()?;
                let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                Ok(rows.as_array().is_some_and(|rows| {
                    rows.iter().any(|r| {
                        r["ip"] == ENDPOINT_IP && r["accepted"].as_bool() == Some(accepted)
                    })
                }))
            },
        )?;
        println!("  the agent programmed the endpoint as {state} within {waited:.1} s");
        Ok(())
    }

    /// A request from the consumer VM to the endpoint.
    pub(super) fn curl(&self) -> Result<(bool, String)> {
        let ns = self.consumer_ns()?;
        let url = format!("http://{ENDPOINT_IP}:8080/");
        let mut shown: Vec<&str> = vec!["netns", "exec", ns.name()];
        shown.extend_from_slice(CURL);
        shown.push(&url);
        show_command("ip", &shown);
        let out = ns
            .command(CURL[0])
            .args(&CURL[1..])
            .arg(&url)
            .output()
            .context("running curl in the consumer VM")?;
        check_interrupted()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        print_indented(&text);
        if !out.status.success() {
            println!("  (curl exit status {})", out.status.code().unwrap_or(-1));
        }
        Ok((out.status.success(), text))
    }

    /// `dig` in a VM against the node's resolver; the answer's status and addresses.
    fn dig(&self, ns: &xtask::netns::NetNs, name: &str) -> Result<(String, Vec<String>)> {
        let server = format!("@{DNS_ADDRESS}");
        let args = [
            server.as_str(),
            "+time=1",
            "+tries=2",
            "+noall",
            "+comments",
            "+answer",
            name,
        ];
        let mut shown: Vec<&str> = vec!["netns", "exec", ns.name(), "dig"];
        shown.extend_from_slice(&args);
        show_command("ip", &shown);
        let out = ns
            .command("dig")
            .args(args)
            .output()
            .context("running dig")?;
        check_interrupted()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print_indented(
            &text
                .lines()
                .filter(|l| l.contains("status:") || (!l.starts_with(';') && !l.trim().is_empty()))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
        let status = text
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("no answer")
            .to_owned();
        let ips = text
            .lines()
            .filter(|l| !l.starts_with(';'))
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [_, _, "IN", "A", ip] => Some(ip.to_owned()),
                _ => None,
            })
            .collect();
        Ok((status, ips))
    }

    /// The endpoint's names resolve to its address in the consumer's VM and do not exist
    /// in the backend's VM (another VPC, the same 10.0.0.0/24).
    pub(super) fn expect_names(&self, endpoint: &str) -> Result<()> {
        let out = self
            .vpcep(&[
                "endpoint",
                "show",
                "--profile",
                "consumer",
                endpoint,
                "-o",
                "json",
            ])
            .output()
            .context("running the vpcep CLI")?;
        let ep: Value = serde_json::from_slice(&out.stdout).context("endpoint show -o json")?;
        let names: Vec<String> = ep["dns_names"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let Some(first) = names.first() else {
            bail!("check failed: the accepted endpoint has no dns_names: {ep}");
        };
        println!("  dns_names: {}", names.join(", "));
        let mut answer = (String::new(), Vec::new());
        wait_for("the node's resolver to answer the name", 10, || {
            answer = self.dig(self.consumer_ns()?, first)?;
            Ok(answer.0 == "NOERROR")
        })?;
        if answer.1 != [ENDPOINT_IP] {
            bail!(
                "check failed: {first} answered {:?} in the consumer's VM",
                answer.1
            );
        }
        let (status, _) = self.dig(self.backend_ns()?, first)?;
        if status != "NXDOMAIN" {
            bail!("check failed: {first} answered {status} in the backend's VPC, not NXDOMAIN");
        }
        println!("  ✓ {first} → {ENDPOINT_IP} in the consumer's VPC; NXDOMAIN in the provider's");
        Ok(())
    }

    pub(super) fn expect_refused(&self, state: &str) -> Result<()> {
        let (ok, text) = self.curl()?;
        if ok {
            bail!(
                "check failed: a request through the {state} endpoint succeeded, it must not:\n{text}"
            );
        }
        println!("  ✓ the {state} endpoint lets nothing through");
        Ok(())
    }

    pub(super) fn expect_served(&self) -> Result<()> {
        let (ok, text) = self.curl()?;
        if !ok || !text.contains("hello from the backend") {
            bail!(
                "check failed: the request through the accepted endpoint did not succeed:\n{text}"
            );
        }
        // The backend sees the node's SNAT address, not the consumer's 10.0.0.2.
        let log = self.path("backend.log");
        let mut line = String::new();
        wait_for("the backend's access log line", 5, || {
            line = fs::read_to_string(&log)?
                .lines()
                .rev()
                .find(|l| l.contains("\"GET / "))
                .unwrap_or_default()
                .to_owned();
            Ok(!line.is_empty())
        })?;
        show_command("tail", &["-n", "1", &log.display().to_string()]);
        print_indented(&line);
        if !line.starts_with("198.19.") {
            bail!(
                "check failed: the backend saw the request from {}, not from a 198.19.128.0/17 SNAT address",
                line.split_whitespace().next().unwrap_or("?")
            );
        }
        println!(
            "  ✓ 200 through {ENDPOINT_IP}:8080; the backend saw source {}",
            line.split_whitespace().next().unwrap_or("?")
        );
        Ok(())
    }

    pub(super) fn expect_counted(&self, table: &str) -> Result<()> {
        let out = self
            .vpcep(&[
                "dataplane",
                "endpoints",
                "--pin-dir",
                &self.pin_dir_str(),
                "-o",
                "json",
            ])
            .output()?;
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let counted = rows.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["ip"] == ENDPOINT_IP
                    && r["packets"].as_u64().unwrap_or(0) > 0
                    && r["new_flows"].as_u64().unwrap_or(0) > 0
            })
        });
        if !counted {
            bail!("check failed: the endpoint's counters show no packets or flows:\n{table}");
        }
        println!("  ✓ the endpoint's packets and flows are counted");
        Ok(())
    }
}

/// The secrets found in a capture (any of `secrets`, byte for byte).
pub(super) fn secrets_in<'a>(capture: &[u8], secrets: &'a [String]) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|s| !s.is_empty() && capture.windows(s.len()).any(|w| w == s.as_bytes()))
        .map(String::as_str)
        .collect()
}

/// TLS records in a capture: handshakes (0x16) and application data (0x17), TLS 1.2 framing.
fn tls_records(capture: &[u8]) -> (usize, usize) {
    let count = |t: u8| {
        capture
            .windows(3)
            .filter(|w| w[0] == t && w[1] == 0x03 && w[2] == 0x03)
            .count()
    };
    (count(0x16), count(0x17))
}

impl Demo {
    /// Stops the capture and checks it: it holds the CLI's and the agent's TLS traffic, and
    /// none of the tokens or secret keys.
    pub(super) fn expect_no_secret_on_the_wire(&mut self) -> Result<()> {
        // tcpdump writes its last packets on SIGTERM.
        self.capture = None;
        let path = self.path("capture.pcap");
        let pcap = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (handshakes, data) = tls_records(&pcap);
        println!(
            "  {} bytes captured on lo: {handshakes} TLS handshake and {data} application-data records",
            pcap.len()
        );
        if handshakes == 0 || data < 10 {
            bail!("the capture holds no TLS traffic: was the control plane's port captured?");
        }
        let found = secrets_in(&pcap, &self.secrets);
        if !found.is_empty() {
            bail!(
                "{} of the {} credentials' secrets crossed loopback in clear",
                found.len(),
                self.secrets.len()
            );
        }
        println!(
            "  none of the {} secrets (operator token, agent token, two SKs) is in it",
            self.secrets.len()
        );
        // Nor in what the control plane and the agent logged.
        for name in ["control-plane.log", "agent.log"] {
            let path = self.path(name);
            let log = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let found = secrets_in(&log, &self.secrets);
            if !found.is_empty() {
                bail!("{} of the secrets are in {name}", found.len());
            }
            println!("  nor in {name} ({} bytes)", log.len());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_planted_secret() {
        let secrets = vec!["s3cr3t-token".to_owned(), "absent".to_owned()];
        let cap = b"\x00\x01GET / HTTP/1.1\r\nx-auth-token: s3cr3t-token\r\n";
        assert_eq!(secrets_in(cap, &secrets), ["s3cr3t-token"]);
        assert!(secrets_in(b"nothing here", &secrets).is_empty());
        assert_eq!(tls_records(b"\x16\x03\x03..\x17\x03\x03"), (1, 1));
    }
}
