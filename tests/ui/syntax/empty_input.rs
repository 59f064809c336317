use densenet::densenet;

densenet! {}

fn main() {}
