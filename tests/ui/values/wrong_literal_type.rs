use densenet::densenet;

densenet! {
    pub Net<growth: "32", blocks: 6, theta: true, stem: 1>
}

fn main() {}
