//! The `densenet` facade under another name: `dn = { package = "densenet", … }`. Nothing
//! here may name `densenet`; if generated code did (`::densenet::runtime`), this crate
//! would not compile. Missing docs are denied: generated models document themselves,
//! from a spec file too.
#![deny(missing_docs)]

dn::densenet! {
    /// An inline model.
    pub RenamedInline<growth: 4, blocks: [2, 2], stem: cifar, input: [3, 16, 16], theta: 0.5>
}

dn::densenet_yaml!("specs/renamed.yaml");

#[cfg(test)]
mod tests {
    use super::*;
    use dn::ndarray::Array4;

    #[test]
    fn both_macros_work_under_a_renamed_dependency() {
        assert_eq!(RenamedInline::INPUT, [3, 16, 16]);
        assert_eq!(RenamedYaml::INPUT, [1, 8, 8]);
        assert_eq!(RenamedYaml::CLASSES, 3);
        let logits = RenamedYaml::init(0)
            .forward(Array4::zeros((2, 1, 8, 8)).view())
            .unwrap();
        assert_eq!(logits.dim(), (2, 3));
        // By hand: stem conv 3·3·3·8 = 216; a block's two bottleneck layers on 8 and 12
        // channels 752 + 824; the transition BN(16) + 1x1 16→8 = 160; head BN(16) + linear
        // 16→10 = 202.
        assert_eq!(RenamedInline::PARAMS, 216 + 2 * (752 + 824) + 160 + 202);
    }
}
