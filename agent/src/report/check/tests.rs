use std::{net::Ipv4Addr, sync::Arc};

use super::*;
use crate::policy::{
    MeshParams,
    fixtures::{self, BOOKINFO_DETAILS},
};

#[test]
fn check_explains_modes_and_outbound() {
    let state = Arc::new(fixtures::state(BOOKINFO_DETAILS));
    let enrolled: Vec<_> = state.workloads.iter().map(|w| (w.key.name.len() as u64, w.clone())).collect();
    let inventory = Inventory::new("node2", "cluster.local", &MeshParams::default(), state.clone(), enrolled);
    let checks = check(&inventory, &[], Some("bookinfo/details"));
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].mtls.mode, "STRICT");
    assert_eq!(checks[0].mtls.peer_authentication.as_deref(), Some("bookinfo/details"));
    assert_eq!(checks[0].ports[&9000].mode, "PERMISSIVE");
    let from: Ipv4Addr = "10.76.0.2".parse().unwrap();
    assert_eq!(
        checks[0].probes.iter().map(|p| (p.port, p.from)).collect::<Vec<_>>(),
        [(8081, from), (15020, from)]
    );
    let text = render(&checks);
    assert!(text.contains("port 8081   plaintext from 10.76.0.2 (kubelet probe)"), "{text}");
    assert!(text.contains("details.bookinfo.svc.cluster.local:81") && text.contains("DISABLE"), "{text}");
    let outbound = &checks[0].outbound;
    let port80 = outbound.iter().find(|o| o.service.ends_with(":80")).unwrap();
    assert!(port80.mtls && port80.destination_rule.as_deref() == Some("bookinfo/details"));
}
