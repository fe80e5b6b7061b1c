//! Per-pod network setup for the engine's transparent inbound legs, done inside the pod's
//! namespace: a policy rule sends packets marked `MARK_INBOUND` (the app's replies to a
//! transparent leg) to a table whose only route delivers everything locally, back to the
//! engine; `tcp_fwmark_accept` makes the app's accepted socket carry the mark of the SYN, and
//! `fwmark_reflect` makes the kernel's own replies (a refused connect) follow it too.
use std::net::Ipv4Addr;

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use lockmesh_common::engine;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::LinkAttribute,
        route::{RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

use crate::sys::netns::NetNs;

/// Priority of the fwmark rule: before the main table (32766).
const RULE_PRIORITY: u32 = 20;
/// Loopback's ifindex is 1 in every namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Installs the rule, the route and the sysctls (idempotent).
pub(crate) async fn prepare(netns: &NetNs) -> anyhow::Result<()> {
    netns.enter(|| -> anyhow::Result<()> {
        for key in ["net/ipv4/tcp_fwmark_accept", "net/ipv4/fwmark_reflect"] {
            std::fs::write(format!("/proc/sys/{key}"), "1").with_context(|| format!("setting {key}"))?;
        }
        Ok(())
    })??;
    let (handle, task) = connect(netns)?;
    let result = async {
        if find_rule(&handle).await?.is_none() {
            handle
                .rule()
                .add()
                .v4()
                .fw_mark(engine::MARK_INBOUND)
                .action(RuleAction::ToTable)
                .table_id(engine::INBOUND_ROUTE_TABLE)
                .priority(RULE_PRIORITY)
                .execute()
                .await
                .context("adding the fwmark rule")?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(engine::INBOUND_ROUTE_TABLE)
            .output_interface(LOOPBACK_IFINDEX)
            .build();
        match handle.route().add(route).replace().execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context("adding the local route of the inbound table")),
        }
    }
    .await;
    task.abort();
    result.with_context(|| format!("preparing {} for transparent inbound", netns.path().display()))
}

/// Removes the rule and the route (the pod leaves the mesh).
pub(crate) async fn undo(netns: &NetNs) -> anyhow::Result<()> {
    let (handle, task) = connect(netns)?;
    let result = async {
        if let Some(rule) = find_rule(&handle).await? {
            handle.rule().del(rule).execute().await.context("deleting the fwmark rule")?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(engine::INBOUND_ROUTE_TABLE)
            .output_interface(LOOPBACK_IFINDEX)
            .build();
        let _ = handle.route().del(route).execute().await; // already gone is fine
        Ok::<_, anyhow::Error>(())
    }
    .await;
    task.abort();
    result
}

/// The name, in the agent's own namespace, of the host side of the veth that carries `pod_ip`
/// into the pod: where traffic towards the pod can be checked before the pod can touch it.
pub(crate) async fn host_interface(netns: &NetNs, pod_ip: Ipv4Addr) -> anyhow::Result<String> {
    let (handle, task) = connect(netns)?;
    let result = async {
        let mut addresses = handle.address().get().execute();
        let mut index = None;
        while let Some(message) = addresses.try_next().await.context("listing pod addresses")? {
            let has_ip = message
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(std::net::IpAddr::V4(ip)) if *ip == pod_ip));
            if has_ip {
                index = Some(message.header.index);
                break;
            }
        }
        let index = index.with_context(|| format!("no interface in the pod has {pod_ip}"))?;
        let mut links = handle.link().get().match_index(index).execute();
        let link =
            links.try_next().await.context("reading the pod's interface")?.context("interface vanished")?;
        link.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Link(peer) => Some(*peer),
                _ => None,
            })
            .with_context(|| format!("the pod's interface {index} has no peer (not a veth?)"))
    }
    .await;
    task.abort();
    let peer = result?;
    let name = nix::net::if_::if_indextoname(peer).with_context(|| {
        format!("no interface {peer} in the agent's namespace (is the agent on the pod's node?)")
    })?;
    Ok(name.to_string_lossy().into_owned())
}

/// A netlink connection whose socket lives in the pod's namespace.
fn connect(netns: &NetNs) -> anyhow::Result<(Handle, tokio::task::JoinHandle<()>)> {
    let (connection, handle, _) =
        netns.enter(rtnetlink::new_connection)?.context("opening netlink in the pod")?;
    Ok((handle, tokio::spawn(connection)))
}

async fn find_rule(handle: &Handle) -> anyhow::Result<Option<RuleMessage>> {
    let mut rules = handle.rule().get(rtnetlink::IpVersion::V4).execute();
    while let Some(rule) = rules.try_next().await.context("listing rules")? {
        let ours = rule.header.family == AddressFamily::Inet
            && rule.header.action == RuleAction::ToTable
            && rule
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::FwMark(m) if *m == engine::MARK_INBOUND))
            && rule
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Table(t) if *t == engine::INBOUND_ROUTE_TABLE));
        if ours {
            return Ok(Some(rule));
        }
    }
    Ok(None)
}
