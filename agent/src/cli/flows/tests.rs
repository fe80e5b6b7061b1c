use super::*;

#[test]
fn sizes_are_short() {
    assert_eq!(human_bytes(512), "512B");
    assert_eq!(human_bytes(1536), "1.5KiB");
    assert_eq!(human_bytes(3 << 30), "3.0GiB");
    assert_eq!(human_ms(20), "20ms");
    assert_eq!(human_ms(1500), "1.5s");
}

#[test]
fn footer_counts_what_is_missing() {
    let status = serde_json::json!({
        "kernel": {"ring_buffer_drops": 12},
        "kernel_events_received": 30,
        "flows": {"evicted_open": 1, "evicted_closed": 2, "unmatched_closes": 3}
    });
    let text = footer(4, Ok(status));
    assert_eq!(
        text.lines().next(),
        Some(
            "4 flows shown · kernel events: 30 received, 12 dropped · flows evicted: 1 open, 2 closed · closes without open: 3"
        )
    );
    assert!(text.contains("dropped 12 flow events"), "{text}");
    let quiet = footer(0, Ok(serde_json::json!({"kernel": {"ring_buffer_drops": 0}})));
    assert!(!quiet.contains("warning"), "{quiet}");
    assert!(footer(0, Err(anyhow::anyhow!("down"))).contains("unavailable: down"));
}
