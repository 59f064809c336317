use densenet::densenet_yaml;

densenet_yaml!("tests/ui/yaml/bad_name.yaml");

fn main() {}
