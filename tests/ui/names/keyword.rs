use densenet::densenet;

densenet! {
    pub Self<growth: 12, depth: 40>
}

fn main() {}
