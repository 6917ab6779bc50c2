//! The README's gateway section shows the configuration files the tests use, as they are, and
//! a configuration the gateway reads.

use wimse_gateway::GatewayConfig;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md")
}

fn deploy(file: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"))).expect("deploy file")
}

fn section(readme: &str) -> &str {
    let start = readme.find("## Gateway").expect("a Gateway section");
    let end = readme[start + 3..].find("\n## ").map_or(readme.len(), |i| start + 3 + i);
    &readme[start..end]
}

#[test]
fn the_nginx_and_caddy_snippets_are_the_files_the_tests_use() {
    let readme = readme();
    let gateway = section(&readme);
    for (fence, file) in [("```nginx\n", "nginx.conf"), ("```caddyfile\n", "Caddyfile")] {
        let block = format!("{fence}{}```", deploy(file));
        assert!(gateway.contains(&block), "README's {file} differs from wimse-gateway/deploy/{file}");
    }
}

#[test]
fn the_configuration_example_is_one_the_gateway_reads() {
    let readme = readme();
    let gateway = section(&readme);
    let start = gateway.find("```toml\n").expect("a TOML example") + "```toml\n".len();
    let end = start + gateway[start..].find("```").expect("its end");
    let config = GatewayConfig::from_toml(&gateway[start..end]).expect("the README's configuration parses");
    assert!(config.forward_auth.is_some() && config.ext_authz.is_some());
    assert!(config.reverse_proxy.is_some() && config.egress.is_some());
    assert_eq!(config.routes.len(), 1);
    assert!(config.routes[0].policy.as_ref().is_some_and(|p| p.require.transaction));
}
