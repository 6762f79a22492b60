//! What the benchmarks share: the inventory configuration they price and attribute with.

use imm_daemon::config::InventoryConfig;

/// A configuration like a real tenant's: company and department attributes, a default
/// license and a price table.
pub fn config() -> InventoryConfig {
    toml::from_str(
        r#"
company_attribute = "CustomAttribute1"
department_attribute = "CustomAttribute2"
license_attribute = "LicenseType"
default_license = "E3"
prices = { E3 = 36.0, E5 = 57.0, F3 = 8.0 }
"#,
    )
    .expect("benchmark configuration parses")
}
