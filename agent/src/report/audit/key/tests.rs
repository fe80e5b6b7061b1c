use std::os::unix::fs::PermissionsExt as _;

use super::*;

#[test]
fn key_is_created_0600_reloaded_and_signs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = NodeKey::load_or_create(&state).unwrap();
    let mode = std::fs::metadata(state.join(KEY_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = NodeKey::load_or_create(&state).unwrap();
    assert_eq!(key.key_id(), again.key_id());
    let signature = key.sign_hex(b"hello");
    assert!(verify(&again.public_hex(), b"hello", &signature));
    assert!(!verify(&again.public_hex(), b"hellO", &signature));
    let (id, public) = parse_pub_file(&key.pub_file()).unwrap();
    assert_eq!((id.as_str(), public), (key.key_id(), key.public_hex()));
}
