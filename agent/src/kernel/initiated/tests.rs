use std::net::Ipv4Addr;

use lockmesh_common::ConnKey;

use super::outbound_connections;

/// Real lines of a pod's /proc/net/tcp: a listener on :9080 (0x2378) with one accepted
/// connection, an outbound connection to 10.77.2.3:15008 (0x3AB0) from port 41000 (0xA028),
/// one to 10.96.0.10:80 in SYN_SENT, a loopback connection and one in TIME_WAIT.
const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:2378 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 02014D0A:2378 03014D0A:B2D4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 02014D0A:A028 03024D0A:3AA0 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 02014D0A:A029 0A00600A:0050 02 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0100007F:A02A 0100007F:3A99 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
   5: 02014D0A:A02B 03024D0A:3AA0 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
";

/// /proc/net/tcp6: a dual-stack listener on :8080 (0x1F90) and an IPv6 connection out from
/// fd00:77::2 port 41100 (0xA08C) to fd00:77::3 port 443.
const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 770000FD000000000000000002000000:A08C 770000FD000000000000000003000000:01BB 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";

fn v4(ip: [u8; 4]) -> [u32; 4] {
    ConnKey::mapped(u32::from(Ipv4Addr::from(ip)).to_be())
}

#[test]
fn connections_the_pod_opened_are_the_ones_on_ports_nothing_listens_on() {
    let keys = outbound_connections(TCP, TCP6);
    let fd00 = |last: u8| {
        let mut bytes = [0u8; 16];
        bytes[0] = 0xfd;
        bytes[3] = 0x77;
        bytes[15] = last;
        [0, 1, 2, 3]
            .map(|i| u32::from_ne_bytes([bytes[i * 4], bytes[i * 4 + 1], bytes[i * 4 + 2], bytes[i * 4 + 3]]))
    };
    assert_eq!(
        keys,
        vec![
            ConnKey {
                pod_ip: v4([10, 77, 1, 2]),
                peer_ip: v4([10, 77, 2, 3]),
                pod_port: 41000,
                peer_port: 15008
            },
            ConnKey {
                pod_ip: v4([10, 77, 1, 2]),
                peer_ip: v4([10, 96, 0, 10]),
                pod_port: 41001,
                peer_port: 80
            },
            ConnKey { pod_ip: fd00(2), peer_ip: fd00(3), pod_port: 41100, peer_port: 443 },
        ]
    );
}

#[test]
fn garbage_lines_are_skipped() {
    assert!(outbound_connections("header\nnot a row\n   0: zz:1 yy:2 01\n", "").is_empty());
}
