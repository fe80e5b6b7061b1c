use clap::Parser as _;

use crate::cli::Cli;

#[test]
fn kube_and_config_exclude_each_other() {
    let parse = |args: &[&str]| Cli::try_parse_from(["lockmesh", "agent", "--node", "n"].iter().chain(args));
    assert!(parse(&["--kube"]).is_ok());
    assert!(parse(&["--kube", "--kubeconfig", "/k"]).is_ok());
    assert!(parse(&["--config", "/c"]).is_ok());
    assert!(parse(&["--kube", "--config", "/c"]).is_err());
    assert!(parse(&["--kubeconfig", "/k", "--config", "/c"]).is_err());
    assert!(parse(&[]).is_err());
    assert!(parse(&["--kubeconfig", "/k"]).is_err());
}
