use densenet::densenet;

densenet! {
    pub Net<growth: 12, depth: 42, bottleneck: false, stem: cifar>
}

fn main() {}
